// Sessions on the page: profile cards (free and queued, refreshed live) to
// start one; then the session itself — its place in the queue and ETA from
// the events socket, the desktop while it runs with the time left counting
// down and the low-credit warnings, and a closing screen that says why it
// ended and what was billed.

import { useEffect, useRef, useState } from "preact/hooks";
import { type Account, type Pricing, type Profile, type Session, api } from "./api";
import { DesktopView } from "./desktop/view";
import { type SessionEvent, SessionEvents } from "./events";
import { clock, creditAsTime, duration } from "./format";
import { depositStatus, followDeposit, sendDeposit } from "./money";
import { describe, endReason } from "./problem";
import type { Wallet } from "./wallet";

const PROFILES_REFRESH_MS = 3000;

export function SessionPanel(props: {
  pricing?: Pricing;
  account: Account;
  /** The signed-in wallet, when connected: one-click top-ups need it. */
  wallet?: Wallet;
  session: Session | null;
  onSession: (s: Session | null) => void;
  onAccountChanged: () => Promise<unknown>;
}) {
  const { session } = props;
  if (!session) return <Profiles account={props.account} onSession={props.onSession} />;
  return <LiveSession {...props} session={session} />;
}

function Profiles(props: { account: Account; onSession: (s: Session) => void }) {
  const [profiles, setProfiles] = useState<Profile[]>([]);
  const [error, setError] = useState<string>();
  const [starting, setStarting] = useState<string>();
  useEffect(() => {
    let timer: ReturnType<typeof setTimeout>;
    const load = () =>
      api.profiles().then(
        (p) => setProfiles(p),
        () => {},
      ).finally(() => (timer = setTimeout(load, PROFILES_REFRESH_MS)));
    load();
    return () => clearTimeout(timer);
  }, []);

  const start = async (name: string) => {
    setStarting(name);
    setError(undefined);
    try {
      props.onSession(await api.claim(name));
    } catch (e) {
      setError(describe(e));
    } finally {
      setStarting(undefined);
    }
  };

  return (
    <section class="panel profiles" aria-labelledby="profiles-heading">
      <h2 id="profiles-heading">Start a desktop</h2>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      <ul class="cards">
        {profiles.map((p) => (
          <li key={p.name} class="card">
            <h3>{p.name}</h3>
            <p>
              {p.gpus} GPU{p.gpus === 1 ? "" : "s"} · {creditAsTime(props.account.credit_seconds, p.gpus)} of credit
            </p>
            <p class="availability" aria-live="polite">
              {p.free ? "free now" : "busy: you would queue"}
              {p.queued > 0 ? ` · ${p.queued} waiting` : ""}
            </p>
            <button
              class="primary"
              onClick={() => start(p.name)}
              disabled={!!starting}
              aria-label={`Start ${p.name}`}
            >
              {starting === p.name ? "Starting…" : `Start ${p.name}`}
            </button>
          </li>
        ))}
      </ul>
    </section>
  );
}

function LiveSession(props: {
  pricing?: Pricing;
  wallet?: Wallet;
  session: Session;
  onSession: (s: Session | null) => void;
  onAccountChanged: () => Promise<unknown>;
}) {
  const { session } = props;
  const [live, setLive] = useState<Session>(session);
  const [secondsLeft, setSecondsLeft] = useState<number | undefined>(session.seconds_left);
  const [lowCredit, setLowCredit] = useState<number>();
  /** Seconds until the idle stop, while warned. */
  const [idleLeft, setIdleLeft] = useState<number>();
  const [connected, setConnected] = useState(true);
  const [error, setError] = useState<string>();
  const liveRef = useRef(live);
  liveRef.current = live;

  // The events socket drives everything while the session lives.
  useEffect(() => {
    const refreshTimeLeft = () =>
      api.session(session.id).then(
        (s) => setSecondsLeft(s.seconds_left),
        () => {},
      );
    const apply = (event: SessionEvent) => {
      const current = liveRef.current;
      switch (event.type) {
        case "state":
          if (event.state === "ended") {
            api.session(session.id).then(setLive, () => setLive({ ...current, state: "ended", end_reason: event.reason }));
            props.onAccountChanged();
          } else {
            setLive({
              ...current,
              state: event.state,
              queue_position: event.queue_position ?? (event.state === "queued" ? current.queue_position : null),
              eta_seconds: event.eta_seconds ?? (event.state === "queued" ? current.eta_seconds : null),
            });
            if (event.state === "running") refreshTimeLeft();
          }
          break;
        case "queue":
          setLive({ ...current, queue_position: event.position, eta_seconds: event.eta_seconds });
          break;
        case "balance":
          props.onAccountChanged();
          refreshTimeLeft();
          break;
        case "low_credit":
          setLowCredit(event.seconds_left);
          setSecondsLeft(event.seconds_left);
          break;
        case "idle_warning":
          setIdleLeft(event.seconds_left);
          break;
        case "lagged":
          api.session(session.id).then(setLive, () => {});
          break;
      }
    };
    const events = new SessionEvents(session.id, apply, setConnected);
    return () => events.close();
  }, [session.id]);

  // The countdown between balance events.
  useEffect(() => {
    if (live.state !== "running" || secondsLeft === undefined) return;
    const timer = setInterval(() => setSecondsLeft((s) => (s === undefined ? s : Math.max(0, s - 1))), 1000);
    return () => clearInterval(timer);
  }, [live.state, secondsLeft === undefined]);

  // The idle countdown, until input or "Keep my desktop" clears it.
  useEffect(() => {
    if (idleLeft === undefined) return;
    const timer = setTimeout(() => setIdleLeft(idleLeft > 0 ? idleLeft - 1 : 0), 1000);
    return () => clearTimeout(timer);
  }, [idleLeft]);

  const keep = async () => {
    try {
      await api.keep(session.id);
      setIdleLeft(undefined);
    } catch (e) {
      setError(describe(e));
    }
  };

  // One click: an hour more on this profile, in ETH, through the wallet.
  const [topUp, setTopUp] = useState<string>();
  const oneClickTopUp = async () => {
    const { wallet, pricing } = props;
    if (!wallet || !pricing) {
      document.getElementById("deposit-heading")?.scrollIntoView({ behavior: "smooth" });
      setTopUp("Connect the wallet you signed in with, below, to top up.");
      return;
    }
    try {
      setTopUp("Waiting for your wallet…");
      const quote = await api.quote("eth", 60, session.profile);
      const hash = await sendDeposit(wallet, pricing, quote);
      const check = await followDeposit(hash, (c) => setTopUp(depositStatus(c)));
      setTopUp(depositStatus(check));
      if (check.status === "credited") {
        setLowCredit(undefined);
        await props.onAccountChanged();
      }
    } catch (e) {
      setTopUp(describe(e));
    }
  };

  const stop = async () => {
    setError(undefined);
    try {
      setLive(await api.stop(session.id));
    } catch (e) {
      setError(describe(e));
    }
  };

  if (live.state === "ended") {
    return (
      <section class="panel ended" aria-labelledby="ended-heading" role="status">
        <h2 id="ended-heading">Your desktop has ended</h2>
        <p class="reason">{endReason(live.end_reason)}</p>
        {live.billed_credit_seconds !== undefined && (
          <p>
            Billed: {duration(live.billed_credit_seconds)} of credit for {duration(live.billed_seconds ?? 0)} on{" "}
            {live.profile}.
          </p>
        )}
        <button class="primary" onClick={() => props.onSession(null)}>
          Start another desktop
        </button>
      </section>
    );
  }

  return (
    <section class={`panel session ${live.state}`} aria-labelledby="session-heading">
      <div class="session-bar">
        <h2 id="session-heading">
          {live.profile}: {live.state === "queued" ? "waiting for a GPU" : live.state}
        </h2>
        {live.state === "running" && secondsLeft !== undefined && (
          <span class="time-left" title="Time left on your credit" data-testid="time-left">
            {clock(secondsLeft)} left
          </span>
        )}
        {!connected && <span class="offline">Reconnecting to the gate…</span>}
        <button onClick={stop} aria-label={live.state === "queued" ? "Leave queue" : "Stop desktop"}>
          {live.state === "queued" ? "Leave queue" : "Stop desktop"}
        </button>
      </div>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      {lowCredit !== undefined && live.state === "running" && (
        <div class="warning" role="alert">
          Your credit runs out in {duration(lowCredit)}.{" "}
          <button class="primary" onClick={oneClickTopUp}>
            Top up 1 hour
          </button>
        </div>
      )}
      {topUp && (
        <p role="status" data-testid="top-up">
          {topUp}
        </p>
      )}
      {idleLeft !== undefined && live.state === "running" && (
        <div class="warning idle" role="alert">
          No input for a while: this desktop stops in {duration(idleLeft)} to save your credit.{" "}
          <button class="primary" onClick={keep}>
            Keep my desktop
          </button>
        </div>
      )}
      {live.state === "queued" && (
        <p class="queue" role="status" data-testid="queue">
          You are number {live.queue_position ?? "?"} in the queue
          {live.eta_seconds != null ? `; a GPU is yours in at most ${duration(live.eta_seconds)}` : ""}.
        </p>
      )}
      {live.state === "launching" && <p role="status">Starting your desktop…</p>}
      {live.state === "running" && (
        // Input on the desktop restarts the gate's idle clock: the warning goes.
        <div onKeyDownCapture={() => setIdleLeft(undefined)} onPointerDownCapture={() => setIdleLeft(undefined)}>
          <DesktopView sessionId={session.id} />
        </div>
      )}
      {live.state === "stopping" && <p role="status">Stopping…</p>}
    </section>
  );
}
