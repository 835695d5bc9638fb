//! Links signed with the coordinator's secret: genuine ones pass until they expire; any
//! change to the job, the expiry or the signature is refused.

use uuid::Uuid;

use super::UrlSigner;
use crate::auth::Auth;
use crate::config::Config;
use crate::db::Db;

async fn auth_with(secret: &str) -> (tempfile::TempDir, Auth) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        jwt_secret: Some(secret.to_owned()),
        ..Config::with_data_dir(dir.path())
    };
    let db = Db::connect(&config.database_url()).await.expect("db");
    let auth = Auth::new(&config, db).expect("auth");
    (dir, auth)
}

/// The signature of a link, as its query carries it.
fn sig_of(url: &str) -> &str {
    url.rsplit_once("&sig=").expect("a sig").1
}

#[tokio::test]
async fn links_are_signed_by_the_secret_and_refused_when_altered_or_expired() {
    let (_dir, auth) = auth_with(&"a".repeat(32)).await;
    let signer = UrlSigner::new(&auth).expect("signer");
    let job = Uuid::now_v7();
    let (now, expires) = (1_700_000_000, 1_700_003_600);
    let url = signer.url("https://api.example.org", job, expires);
    assert!(
        url.starts_with(&format!(
            "https://api.example.org/v1/images/{job}.png?expires={expires}&sig="
        )),
        "{url}"
    );
    let sig = sig_of(&url);
    assert_eq!(sig.len(), 43, "32 bytes, base64url without padding");
    signer.check(job, expires, sig, now).expect("genuine");

    // The same secret signs the same links (restarts, other replicas); another does not.
    let (_dir2, same) = auth_with(&"a".repeat(32)).await;
    UrlSigner::new(&same)
        .expect("signer")
        .check(job, expires, sig, now)
        .expect("same secret");
    let (_dir3, other) = auth_with(&"b".repeat(32)).await;
    let refusal = UrlSigner::new(&other)
        .expect("signer")
        .check(job, expires, sig, now)
        .expect_err("another secret");
    assert_eq!(
        (refusal.status().as_u16(), refusal.code()),
        (403, "forbidden")
    );

    let mut flipped = sig.to_owned();
    let last = if flipped.ends_with('A') { "B" } else { "A" };
    flipped.replace_range(42.., last);
    for (job, expires, sig) in [
        (job, expires, flipped.as_str()),
        (job, expires + 3600, sig),
        (Uuid::now_v7(), expires, sig),
        (job, expires, ""),
    ] {
        let refusal = signer.check(job, expires, sig, now).expect_err("altered");
        assert_eq!(refusal.status().as_u16(), 403);
        assert!(refusal.to_string().contains("does not match"), "{refusal}");
    }
    let refusal = signer
        .check(job, expires, sig, expires + 5)
        .expect_err("expired");
    assert_eq!(refusal.status().as_u16(), 403);
    assert!(refusal.to_string().contains("expired 5 s ago"), "{refusal}");
}
