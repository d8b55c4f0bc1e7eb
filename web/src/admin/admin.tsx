// The operator page: GPU hosts (state, last contact, drain, declare gone),
// GPUs (state, lease, drain toggle), sessions not ended
// (with stop), credit adjustments (with an idempotency key, so a retried
// click posts once) and the audit log. The admin token is typed in and kept
// in this tab's memory only: never a cookie, never storage, gone on reload.

import { useEffect, useState } from "preact/hooks";
import { type AdminGpu, type AdminHost, type AdminSession, type AuditEntry, adminApi } from "../api";
import { duration } from "../format";
import { ApiError, describe } from "../problem";

const REFRESH_MS = 5000;

export function Admin() {
  const [token, setToken] = useState<string>();
  if (!token) return <TokenForm onToken={setToken} />;
  return <Dashboard token={token} onSignOut={() => setToken(undefined)} />;
}

function TokenForm({ onToken }: { onToken: (t: string) => void }) {
  const [value, setValue] = useState("");
  const [error, setError] = useState<string>();
  const submit = async (e: Event) => {
    e.preventDefault();
    try {
      // The audit log needs only the database: the token can be checked
      // while sessions are not up yet (recovery waiting for a GPU host).
      await adminApi(value.trim()).audit();
      onToken(value.trim());
    } catch (err) {
      setError(
        err instanceof ApiError && (err.status === 401 || err.status === 404)
          ? "That is not this gate's admin token (or the admin API is off)."
          : describe(err),
      );
    }
  };
  return (
    <div class="page">
      <header class="top">
        <h1>deskgate operator</h1>
      </header>
      <form class="panel" onSubmit={submit}>
        <label>
          Admin token
          <input type="password" autocomplete="off" value={value} onInput={(e) => setValue(e.currentTarget.value)} />
        </label>{" "}
        <button class="primary" type="submit" disabled={!value.trim()}>
          Open
        </button>
        <p class="note">Kept in this tab's memory only; reloading the page forgets it.</p>
        {error && (
          <p class="error" role="alert">
            {error}
          </p>
        )}
      </form>
    </div>
  );
}

function Dashboard({ token, onSignOut }: { token: string; onSignOut: () => void }) {
  const admin = adminApi(token);
  const [hosts, setHosts] = useState<{ discovery: boolean; hosts: AdminHost[] }>();
  const [gpus, setGpus] = useState<AdminGpu[]>([]);
  const [sessions, setSessions] = useState<AdminSession[]>([]);
  const [audit, setAudit] = useState<AuditEntry[]>([]);
  const [error, setError] = useState<string>();
  const [tick, setTick] = useState(0);

  useEffect(() => {
    // Each part shows what it can: before sessions are up the hosts and the
    // audit log still answer, and the operator needs them most then.
    Promise.allSettled([admin.hosts(), admin.gpus(), admin.sessions(), admin.audit()]).then(([h, g, s, a]) => {
      if (h.status === "fulfilled") setHosts(h.value);
      if (g.status === "fulfilled") setGpus(g.value.gpus);
      if (s.status === "fulfilled") setSessions(s.value.sessions);
      if (a.status === "fulfilled") setAudit(a.value.entries);
      const failed = [h, g, s, a].find((r) => r.status === "rejected");
      setError(failed ? describe(failed.reason) : undefined);
    });
    const timer = setTimeout(() => setTick(tick + 1), REFRESH_MS);
    return () => clearTimeout(timer);
  }, [tick]);

  const act = async (action: () => Promise<unknown>) => {
    try {
      await action();
      setTick(tick + 1);
    } catch (e) {
      setError(describe(e));
    }
  };

  return (
    <div class="page">
      <header class="top">
        <h1>deskgate operator</h1>
        <button onClick={onSignOut}>Forget token</button>
      </header>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      {hosts && <Hosts hosts={hosts.hosts} discovery={hosts.discovery} act={act} admin={admin} />}
      <section class="panel" aria-labelledby="gpus-heading">
        <h2 id="gpus-heading">GPUs</h2>
        <table>
          <thead>
            <tr>
              <th>GPU</th>
              <th>State</th>
              <th>Session</th>
              <th>Drain</th>
            </tr>
          </thead>
          <tbody>
            {gpus.map((g) => {
              const name = `host ${g.host} GPU ${g.index}`;
              const draining = g.state === "draining";
              return (
                <tr key={name}>
                  <td>{name}</td>
                  <td>
                    {g.state}
                    {g.reason ? ` (${g.reason})` : ""}
                  </td>
                  <td>{g.lease ? <code>{g.lease.session.slice(0, 8)}</code> : "—"}</td>
                  <td>
                    <button aria-pressed={draining} onClick={() => act(() => admin.drain(g.host, g.index, !draining))} aria-label={`${draining ? "Undrain" : "Drain"} ${name}`}>
                      {draining ? "Undrain" : "Drain"}
                    </button>
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      </section>
      <section class="panel" aria-labelledby="sessions-heading">
        <h2 id="sessions-heading">Sessions</h2>
        {sessions.length === 0 ? (
          <p class="note">No session is queued or running.</p>
        ) : (
          <table>
            <thead>
              <tr>
                <th>Session</th>
                <th>Wallet</th>
                <th>Profile</th>
                <th>Host</th>
                <th>State</th>
                <th>Left</th>
                <th />
              </tr>
            </thead>
            <tbody>
              {sessions.map((s) => (
                <tr key={s.id}>
                  <td>
                    <code>{s.id.slice(0, 8)}</code>
                  </td>
                  <td>
                    <code title={s.address}>{s.address.slice(0, 10)}…</code>
                  </td>
                  <td>{s.profile}</td>
                  <td>{s.host_name ?? (s.host != null ? `host ${s.host}` : "—")}</td>
                  <td>
                    {s.state}
                    {s.queue_position ? ` #${s.queue_position}` : ""}
                  </td>
                  <td>{s.seconds_left != null ? duration(s.seconds_left) : "—"}</td>
                  <td>
                    <button onClick={() => act(() => admin.stop(s.id))} aria-label={`Stop session ${s.id.slice(0, 8)}`}>
                      Stop
                    </button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </section>
      <CreditForm token={token} onDone={() => setTick(tick + 1)} />
      <section class="panel" aria-labelledby="audit-heading">
        <h2 id="audit-heading">Audit log</h2>
        <table>
          <thead>
            <tr>
              <th>When</th>
              <th>Who</th>
              <th>What</th>
              <th>Subject</th>
            </tr>
          </thead>
          <tbody>
            {audit.map((e) => (
              <tr key={e.id}>
                <td>{new Date(e.at).toLocaleString()}</td>
                <td>{e.actor}</td>
                <td>{e.action}</td>
                <td>{e.subject ?? "—"}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </section>
    </div>
  );
}

function Hosts({
  hosts,
  discovery,
  act,
  admin,
}: {
  hosts: AdminHost[];
  discovery: boolean;
  act: (action: () => Promise<unknown>) => void;
  admin: ReturnType<typeof adminApi>;
}) {
  return (
    <section class="panel" aria-labelledby="hosts-heading">
      <h2 id="hosts-heading">GPU hosts</h2>
      {hosts.length === 0 ? (
        <p class="note">
          {discovery ? "No launcher has answered yet: the gate looks for them every 5 s." : "No GPU host."}
        </p>
      ) : (
        <table>
          <thead>
            <tr>
              <th>Host</th>
              <th>State</th>
              <th>GPUs</th>
              <th>Sessions</th>
              <th>Last contact</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {hosts.map((h) => {
              const label = h.name ?? `host ${h.number}`;
              const free = h.gpus.filter((g) => g.state === "free").length;
              const gone = h.state === "gone";
              return (
                <tr key={h.number}>
                  <td>
                    {label} <span class="note">#{h.number}</span>
                  </td>
                  <td>
                    {h.state}
                    {h.drained && !gone ? ", drained" : ""}
                  </td>
                  <td>{gone ? "—" : `${free} free of ${h.gpus.length}`}</td>
                  <td>{gone ? "—" : h.sessions}</td>
                  <td>{h.last_contact ? new Date(h.last_contact).toLocaleTimeString() : "—"}</td>
                  <td>
                    {h.name && !gone && (
                      <button
                        aria-pressed={h.drained}
                        onClick={() => act(() => admin.drainHost(h.name as string, !h.drained))}
                        aria-label={`${h.drained ? "Undrain" : "Drain"} host ${label}`}
                      >
                        {h.drained ? "Undrain" : "Drain"}
                      </button>
                    )}{" "}
                    {h.name && (h.state === "unreachable" || h.state === "missing") && (
                      <button
                        onClick={() => {
                          const sure = confirm(
                            `Declare ${label} gone? Its sessions end now and it is never used again under this name.`,
                          );
                          if (sure) act(() => admin.retireHost(h.name as string));
                        }}
                        aria-label={`Declare host ${label} gone`}
                      >
                        Declare gone
                      </button>
                    )}
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      )}
    </section>
  );
}

function newKey(): string {
  return crypto.getRandomValues(new Uint32Array(4)).reduce((s, n) => s + n.toString(16).padStart(8, "0"), "");
}

function CreditForm({ token, onDone }: { token: string; onDone: () => void }) {
  const [address, setAddress] = useState("");
  const [amount, setAmount] = useState("");
  const [reason, setReason] = useState("");
  // One key per intended adjustment: a retry after an error posts once.
  const [key, setKey] = useState(newKey);
  const [result, setResult] = useState<string>();
  const submit = async (e: Event) => {
    e.preventDefault();
    try {
      const r = await adminApi(token).credit(address.trim(), Number(amount), reason, key);
      setResult(
        `${r.replayed ? "Already posted" : "Posted"}: ${r.address} now has ${duration(r.credit_seconds)} of credit.`,
      );
      setKey(newKey());
      onDone();
    } catch (err) {
      setResult(describe(err));
    }
  };
  return (
    <form class="panel" onSubmit={submit} aria-labelledby="credit-heading">
      <h2 id="credit-heading">Adjust credit</h2>
      <div class="row">
        <label>
          Wallet address
          <input value={address} onInput={(e) => setAddress(e.currentTarget.value)} size={44} />
        </label>
        <label>
          Credit-seconds (negative to take)
          <input type="number" step={1} value={amount} onInput={(e) => setAmount(e.currentTarget.value)} />
        </label>
        <label>
          Reason
          <input value={reason} onInput={(e) => setReason(e.currentTarget.value)} />
        </label>
      </div>
      <button class="primary" type="submit" disabled={!address || !amount || !reason}>
        Adjust credit
      </button>
      {result && <p role="status">{result}</p>}
    </form>
  );
}
