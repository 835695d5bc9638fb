//! End-to-end tests: the real coordinator on a loopback port, real agent processes, real
//! WebSockets, a real database (SQLite always; PostgreSQL when `INFERMINE_TEST_POSTGRES_URL`
//! is set). One test binary, so the suite links once.

mod abuse;
mod api_errors;
mod cases;
mod challenges;
mod chat;
mod chat_errors;
mod frames;
mod images;
mod lifecycle;
mod limits;
mod metrics;
mod openai_client;
mod openai_errors;
mod openapi;
mod points;
mod replicas;
mod rules;
mod storage;
mod wallet;

/// Runs `$scenario(backend)` as two tests: on SQLite, and on PostgreSQL when configured.
#[macro_export]
macro_rules! on_both_databases {
    ($scenario:ident) => {
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$scenario(infermine_tests::Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(backend) = infermine_tests::Backend::postgres().await {
                    super::$scenario(backend).await;
                }
            }
        }
    };
}
