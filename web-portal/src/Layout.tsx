import { NavLink, Outlet, useRouteError } from 'react-router';

const NAV = [
  { to: '/', label: 'Look up', end: true },
  { to: '/leaderboard', label: 'Leaderboard', end: false },
  { to: '/rules', label: 'Rules', end: false },
  { to: '/admin', label: 'Admin', end: false },
];

function Header() {
  return (
    <header className="site-header">
      <a className="skip-link" href="#main">
        Skip to content
      </a>
      <div className="header-inner">
        <NavLink to="/" className="brand" aria-label="infermine home">
          <span className="brand-mark" aria-hidden="true">
            ◆
          </span>
          infermine
        </NavLink>
        <nav aria-label="Main">
          <ul className="nav-list">
            {NAV.map((item) => (
              <li key={item.to}>
                <NavLink to={item.to} end={item.end} className="nav-link">
                  {item.label}
                </NavLink>
              </li>
            ))}
          </ul>
        </nav>
      </div>
    </header>
  );
}

export function Layout() {
  return (
    <>
      <Header />
      <main id="main" className="main">
        <Outlet />
      </main>
      <footer className="site-footer">
        <p>
          infermine: decentralized GPU inference. Waifu points for images, Llama points for LLMs.{' '}
          <a href="/docs">API reference</a>
        </p>
      </footer>
    </>
  );
}

export function RouteError() {
  const error = useRouteError();
  const message = error instanceof Error ? error.message : 'The page failed to load.';
  return (
    <>
      <Header />
      <main id="main" className="main">
        <h1>Something went wrong</h1>
        <div className="notice notice-error" role="alert" data-testid="error">
          <p data-testid="error-message">{message}</p>
          <p>
            <a href="/">Back to the look-up</a>
          </p>
        </div>
      </main>
    </>
  );
}
