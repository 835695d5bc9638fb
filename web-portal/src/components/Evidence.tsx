import { useEffect, useState } from 'react';
import { apiBlob, apiJson, errorMessage } from '../api';
import { asNumber, asRecord, asString } from '../format';
import { formatDecimal } from '../shared.js';
import type { Case, JobObjects, TokenScore } from '../types';
import { Empty, ErrorMessage, Loading } from './common';

type Fetched<T> = { state: 'loading' } | { state: 'ok'; value: T } | { state: 'error'; message: string };

const objectPath = (job: string, name: string) =>
  `/api/v1/admin/jobs/${encodeURIComponent(job)}/objects/${encodeURIComponent(name)}`;

/** A stored job image, fetched with the admin's bearer token and shown through an object URL. */
function StoredImage({ token, job, title, testId }: { token: string; job: string | undefined; title: string; testId: string }) {
  const [image, setImage] = useState<Fetched<string>>({ state: 'loading' });

  useEffect(() => {
    if (!job) return;
    const controller = new AbortController();
    let url: string | null = null;
    setImage({ state: 'loading' });
    apiBlob(objectPath(job, 'output.png'), { token, signal: controller.signal }).then(
      (blob) => {
        url = URL.createObjectURL(blob);
        setImage({ state: 'ok', value: url });
      },
      (e) => {
        if (!controller.signal.aborted) setImage({ state: 'error', message: errorMessage(e) });
      },
    );
    return () => {
      controller.abort();
      if (url) URL.revokeObjectURL(url);
    };
  }, [job, token]);

  return (
    <figure className="evidence-image" data-testid={testId}>
      <figcaption>
        <strong>{title}</strong>
        {job && (
          <>
            {' '}
            <code className="muted">job {job}</code>
          </>
        )}
      </figcaption>
      {!job ? (
        <p className="muted image-missing" data-testid={`${testId}-missing`}>
          No job recorded for this image.
        </p>
      ) : image.state === 'loading' ? (
        <Loading what="the image" />
      ) : image.state === 'error' ? (
        <p className="muted image-missing" data-testid={`${testId}-missing`}>
          Not available: {image.message}
        </p>
      ) : (
        <img src={image.value} alt={`${title} (output.png of job ${job})`} data-testid={`${testId}-img`} />
      )}
    </figure>
  );
}

function Figure({ label, value, limit, failing }: { label: string; value: number | undefined; limit: string; failing: boolean }) {
  return (
    <tr className={failing ? 'row-fail' : undefined}>
      <th scope="row">{label}</th>
      <td className="num">{value === undefined ? '—' : formatDecimal(value, 4)}</td>
      <td>{limit}</td>
      <td>{value === undefined ? '—' : failing ? <strong className="text-danger">fails</strong> : 'passes'}</td>
    </tr>
  );
}

function ImageSimilarity({ item, token }: { item: Case; token: string }) {
  const ev = item.evidence;
  const sim = asRecord(ev.similarity) ?? {};
  const thr = asRecord(ev.thresholds) ?? {};
  const ssim = asNumber(sim.ssim);
  const detail = asNumber(sim.detail_ratio);
  const phash = asNumber(sim.phash_distance);
  const minSsim = asNumber(thr.min_ssim);
  const minDetail = asNumber(thr.min_detail_ratio);
  const maxPhash = asNumber(thr.max_phash_distance);
  const job = asString(ev.job) ?? item.job_id ?? undefined;
  const validationJob = asString(ev.validation_job);
  return (
    <>
      <div className="side-by-side" data-testid="evidence-images">
        <StoredImage token={token} job={job} title="Miner's image" testId="miner-image" />
        <StoredImage token={token} job={validationJob} title="Validator's image" testId="validator-image" />
      </div>
      {(ssim !== undefined || detail !== undefined || phash !== undefined) && (
        <div className="table-scroll">
          <table className="compact" data-testid="similarity-table">
            <caption>Similarity of the two images</caption>
            <thead>
              <tr>
                <th scope="col">Measure</th>
                <th scope="col" className="num">
                  Value
                </th>
                <th scope="col">Threshold</th>
                <th scope="col">Verdict</th>
              </tr>
            </thead>
            <tbody>
              <Figure
                label="SSIM"
                value={ssim}
                limit={minSsim === undefined ? '—' : `at least ${minSsim}`}
                failing={ssim !== undefined && minSsim !== undefined && ssim < minSsim}
              />
              <Figure
                label="Detail ratio"
                value={detail}
                limit={minDetail === undefined ? '—' : `at least ${minDetail}`}
                failing={detail !== undefined && minDetail !== undefined && detail < minDetail}
              />
              <Figure
                label="pHash distance"
                value={phash}
                limit={maxPhash === undefined ? '—' : `at most ${maxPhash}`}
                failing={phash !== undefined && maxPhash !== undefined && phash > maxPhash}
              />
            </tbody>
          </table>
        </div>
      )}
    </>
  );
}

function completionText(output: unknown): string | undefined {
  const record = asRecord(output);
  if (!record) return undefined;
  return asString(record.text) ?? asString(asRecord(record.output)?.text);
}

function TeacherForcing({ item, token }: { item: Case; token: string }) {
  const ev = item.evidence;
  const job = asString(ev.job) ?? item.job_id ?? undefined;
  const [text, setText] = useState<Fetched<string | undefined>>({ state: 'loading' });
  const scores = (Array.isArray(ev.token_scores) ? ev.token_scores : []) as TokenScore[];
  const score = asRecord(ev.score);

  useEffect(() => {
    if (!job) return;
    const controller = new AbortController();
    apiBlob(objectPath(job, 'output.json'), { token, signal: controller.signal })
      .then((blob) => blob.text())
      .then(
        (raw) => {
          let value: string | undefined;
          try {
            value = completionText(JSON.parse(raw));
          } catch {
            value = raw;
          }
          setText({ state: 'ok', value });
        },
        (e) => {
          if (!controller.signal.aborted) setText({ state: 'error', message: errorMessage(e) });
        },
      );
    return () => controller.abort();
  }, [job, token]);

  const outOfSupport = scores.filter((s) => !s.in_support).length;
  const unseeded = scores.filter((s) => s.seeded !== s.id).length;

  return (
    <>
      <h4>Miner's completion</h4>
      <div data-testid="miner-completion">
        {!job ? (
          <p className="muted">No job recorded for this case.</p>
        ) : text.state === 'loading' ? (
          <Loading what="the completion" />
        ) : text.state === 'error' ? (
          <p className="muted" data-testid="miner-completion-missing">
            Not available: {text.message}
          </p>
        ) : text.value === undefined ? (
          <p className="muted">The stored output has no text.</p>
        ) : (
          <pre className="completion" tabIndex={0} data-testid="miner-completion-text">
            {text.value}
          </pre>
        )}
      </div>
      {score && (
        <div className="table-scroll">
          <table className="compact" data-testid="llm-score">
            <caption>Score</caption>
            <tbody>
              {Object.entries(score).map(([key, value]) => (
                <tr key={key}>
                  <th scope="row">{key.replace(/_/g, ' ')}</th>
                  <td className="num">{typeof value === 'number' ? formatDecimal(value, 4) : String(value)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <h4>Per-token scores</h4>
      {scores.length === 0 ? (
        <Empty testId="token-scores-empty">The evidence holds no per-token scores.</Empty>
      ) : (
        <>
          <p className="muted" data-testid="token-scores-summary">
            {scores.length} tokens: {outOfSupport} out of the sampling's support, {unseeded} differ from what
            the seeded sampler drew. Those rows are highlighted.
          </p>
          <div className="table-scroll token-table-wrap" tabIndex={0} role="region" aria-label="Per-token scores">
            <table className="compact token-table" data-testid="token-scores">
              <thead>
                <tr>
                  <th scope="col" className="num">
                    #
                  </th>
                  <th scope="col" className="num">
                    Token
                  </th>
                  <th scope="col" className="num">
                    Seeded
                  </th>
                  <th scope="col" className="num">
                    Rank
                  </th>
                  <th scope="col" className="num">
                    log p
                  </th>
                  <th scope="col" className="num">
                    log q
                  </th>
                  <th scope="col" className="num">
                    E[log q]
                  </th>
                  <th scope="col" className="num">
                    Var
                  </th>
                  <th scope="col">In support</th>
                </tr>
              </thead>
              <tbody>
                {scores.map((s, i) => {
                  const bad = !s.in_support;
                  const differs = s.seeded !== s.id;
                  return (
                    <tr
                      key={i}
                      className={bad ? 'row-fail' : differs ? 'row-warn' : undefined}
                      data-testid="token-score-row"
                      data-in-support={s.in_support}
                      data-seeded-match={!differs}
                    >
                      <td className="num">{i}</td>
                      <td className="num">{s.id}</td>
                      <td className="num">
                        {s.seeded}
                        {differs && <span className="visually-hidden"> (differs)</span>}
                      </td>
                      <td className="num">{s.rank}</td>
                      <td className="num">{formatDecimal(s.logprob, 3)}</td>
                      <td className="num">{formatDecimal(s.sample_logprob, 3)}</td>
                      <td className="num">{formatDecimal(s.expected_logprob, 3)}</td>
                      <td className="num">{formatDecimal(s.logprob_variance, 3)}</td>
                      <td>{s.in_support ? 'yes' : <strong className="text-danger">no</strong>}</td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </div>
        </>
      )}
    </>
  );
}

/** The stored objects of a job, each openable (fetched with the admin token). */
function JobObjectsList({ job, token }: { job: string; token: string }) {
  const [list, setList] = useState<Fetched<JobObjects>>({ state: 'loading' });
  const [opening, setOpening] = useState<string | null>(null);
  const [openError, setOpenError] = useState<Error | null>(null);

  useEffect(() => {
    const controller = new AbortController();
    apiJson<JobObjects>(`/api/v1/admin/jobs/${encodeURIComponent(job)}/objects`, { token, signal: controller.signal }).then(
      (value) => setList({ state: 'ok', value }),
      (e) => {
        if (!controller.signal.aborted) setList({ state: 'error', message: errorMessage(e) });
      },
    );
    return () => controller.abort();
  }, [job, token]);

  async function open(name: string) {
    setOpening(name);
    setOpenError(null);
    try {
      const blob = await apiBlob(objectPath(job, name), { token });
      const url = URL.createObjectURL(blob);
      window.open(url, '_blank', 'noopener');
      window.setTimeout(() => URL.revokeObjectURL(url), 60_000);
    } catch (e) {
      setOpenError(e as Error);
    } finally {
      setOpening(null);
    }
  }

  return (
    <div className="job-objects" data-testid="job-objects">
      <h4>
        Stored objects of job <code>{job}</code>
      </h4>
      {list.state === 'loading' && <Loading what="the job's objects" />}
      {list.state === 'error' && <p className="muted">None available: {list.message}</p>}
      {list.state === 'ok' && (
        <ul className="plain-list">
          {list.value.objects.map((o) => (
            <li key={o.name}>
              <button type="button" className="button-link" onClick={() => open(o.name)} disabled={opening !== null}>
                {o.name}
              </button>{' '}
              <span className="muted">
                {o.size_bytes.toLocaleString('en-US')} bytes, SHA-256 <code title={o.sha256}>{o.sha256.slice(0, 12)}…</code>
              </span>
            </li>
          ))}
        </ul>
      )}
      {openError && <ErrorMessage error={openError} title="The object could not be opened" />}
    </div>
  );
}

/** A case's evidence, shown for its check; anything unknown as readable JSON. */
export function Evidence({ item, token }: { item: Case; token: string }) {
  const problem = asString(item.evidence.problem);
  const job = asString(item.evidence.job) ?? item.job_id ?? undefined;
  return (
    <section aria-labelledby="evidence-heading" className="card" data-testid="evidence">
      <h2 id="evidence-heading">Evidence</h2>
      {problem && (
        <p className="problem" data-testid="evidence-problem">
          <strong>Problem:</strong> {problem}
        </p>
      )}
      {item.check === 'image_similarity' && <ImageSimilarity item={item} token={token} />}
      {item.check === 'llm_teacher_forcing' && <TeacherForcing item={item} token={token} />}
      <details className="raw-evidence" open={item.check !== 'image_similarity' && item.check !== 'llm_teacher_forcing'}>
        <summary>All evidence (JSON)</summary>
        <pre className="json" tabIndex={0} data-testid="evidence-json">
          {JSON.stringify(
            item.check === 'llm_teacher_forcing'
              ? { ...item.evidence, token_scores: `(${Array.isArray(item.evidence.token_scores) ? item.evidence.token_scores.length : 0} rows, in the table above)` }
              : item.evidence,
            null,
            2,
          )}
        </pre>
      </details>
      {job && <JobObjectsList job={job} token={token} />}
    </section>
  );
}
