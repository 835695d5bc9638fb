import { StrictMode, lazy, Suspense, type ReactNode } from 'react';
import { createRoot } from 'react-dom/client';
import { createBrowserRouter, RouterProvider } from 'react-router';
import { Layout, RouteError } from './Layout';
import { Home } from './pages/Home';
import { Loading } from './components/common';
import './styles.css';

// The wallet page (with the chart) and the admin pages load on demand, keeping the first
// download small.
const WalletPage = lazy(() => import('./pages/Wallet'));
const LeaderboardPage = lazy(() => import('./pages/Leaderboard'));
const RulesPage = lazy(() => import('./pages/Rules'));
const AdminPage = lazy(() => import('./pages/Admin'));
const NotFound = lazy(() => import('./pages/NotFound'));

function page(element: ReactNode) {
  return <Suspense fallback={<Loading what="the page" />}>{element}</Suspense>;
}

const router = createBrowserRouter([
  {
    path: '/',
    element: <Layout />,
    errorElement: <RouteError />,
    children: [
      { index: true, element: <Home /> },
      { path: 'wallet/:address', element: page(<WalletPage />) },
      { path: 'leaderboard', element: page(<LeaderboardPage />) },
      { path: 'rules', element: page(<RulesPage />) },
      { path: 'admin', element: page(<AdminPage />) },
      { path: 'admin/cases/:caseId', element: page(<AdminPage />) },
      { path: '*', element: page(<NotFound />) },
    ],
  },
]);

createRoot(document.getElementById('root')!).render(
  <StrictMode>
    <RouterProvider router={router} />
  </StrictMode>,
);
