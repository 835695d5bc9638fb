import { Link, useLocation } from 'react-router';
import { PageHeading } from '../components/common';
import { useTitle } from '../hooks';

export default function NotFound() {
  useTitle('Not found');
  const location = useLocation();
  return (
    <div>
      <PageHeading>Page not found</PageHeading>
      <p data-testid="not-found">
        There is no page at <code>{location.pathname}</code>. <Link to="/">Look up a wallet</Link> instead.
      </p>
    </div>
  );
}
