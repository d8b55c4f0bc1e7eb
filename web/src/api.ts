// The gate's JSON API, as the page uses it. The page is served by the gate
// itself, so requests are same-origin and carry the HttpOnly
// `deskgate_token` cookie that sign-in sets: the page never holds the token.
// Error answers (application/problem+json) become ApiError.

import { ApiError } from "./problem";

const BASE = "/api/v1";

async function call<T>(method: string, path: string, body?: unknown, bearer?: string): Promise<T> {
  const headers: Record<string, string> = {};
  if (body !== undefined) headers["content-type"] = "application/json";
  if (bearer) headers.authorization = `Bearer ${bearer}`;
  const response = await fetch(`${BASE}${path}`, {
    method,
    // The admin page sends its token itself and no cookie.
    credentials: bearer ? "omit" : "same-origin",
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 204) return undefined as T;
  const text = await response.text();
  const json = text ? JSON.parse(text) : undefined;
  if (!response.ok) {
    const type = String(json?.type ?? "");
    const kind = type.startsWith("urn:deskgate:problem:") ? type.slice(21) : `http-${response.status}`;
    throw new ApiError(response.status, kind, json?.detail, json ?? {});
  }
  return json as T;
}

export type Asset = "eth" | "token";
export type SessionState = "queued" | "launching" | "running" | "stopping" | "ended";
export type EndReason = { kind: string; detail?: unknown } | null;

export interface Pricing {
  chain_id: number;
  /** A public RPC URL of the chain, for wallets that do not know it. */
  wallet_rpc_url: string | null;
  revenue_address: string | null;
  deposits_enabled: boolean;
  assets: { asset: Asset; address: string | null; per_gpu_hour: string }[];
  profiles: { name: string; gpus: number; wei_per_hour: string; token_per_hour: string | null }[];
  tiers: { min_token_balance: string; discount_percent: number }[];
  confirmations: { blocks: number } | "finalized";
}

export interface Account {
  address: string;
  credit_seconds: number;
  active_session: string | null;
}

export interface LedgerPage {
  entries: { txn_id: string; kind: string; reference: string; amount: number; created_at: string }[];
  next_before: string | null;
}

export interface Deposit {
  tx_hash: string;
  log_index: number;
  block_number: number;
  asset: Asset;
  amount: string;
  status: "pending" | "credited" | "rejected" | "removed";
  credit_seconds: number | null;
}

export interface DepositCheck {
  status: "pending" | "credited" | "rejected";
  confirmations: number;
  required: number | null;
  credit_seconds: number | null;
  reason: string | null;
}

export interface Quote {
  asset: Asset;
  profile: string;
  minutes: number;
  credit_seconds: number;
  discount_percent: number;
  amount: string;
  revenue_address: string;
}

export interface Profile {
  name: string;
  gpus: number;
  /** Whether a claim would get GPUs at once. */
  free: boolean;
  /** Claims of this size waiting. */
  queued: number;
}

export interface Session {
  id: string;
  profile: string;
  gpus?: number;
  state: SessionState;
  queue_position: number | null;
  eta_seconds: number | null;
  seconds_left?: number;
  billed_credit_seconds?: number;
  billed_seconds?: number;
  end_reason?: EndReason;
}

export interface IceServer {
  urls: string[];
  username?: string;
  credential?: string;
}

export interface Ticket {
  ticket: string;
  purpose: "vnc" | "webrtc";
  expires_at: string;
  ice_servers?: IceServer[];
}

export const api = {
  pricing: () => call<Pricing>("GET", "/pricing"),
  nonce: (address: string) =>
    call<{ nonce: string; message: string; expires_at: string }>("POST", "/auth/nonce", { address }),
  verify: (message: string, signature: string) =>
    call<{ address: string; expires_at: string }>("POST", "/auth/verify", { message, signature }),
  logout: () => call<void>("POST", "/auth/logout"),
  account: () => call<Account>("GET", "/account"),
  ledger: (before?: string) =>
    call<LedgerPage>("GET", `/account/ledger?limit=20${before ? `&before=${encodeURIComponent(before)}` : ""}`),
  deposits: () => call<{ deposits: Deposit[] }>("GET", "/deposits"),
  checkDeposit: (txHash: string) => call<DepositCheck>("POST", "/deposits", { tx_hash: txHash }),
  quote: (asset: Asset, minutes: number, profile: string) =>
    call<Quote>("GET", `/quote?asset=${asset}&minutes=${minutes}&profile=${encodeURIComponent(profile)}`),
  profiles: () => call<Profile[]>("GET", "/profiles"),
  claim: (profile: string) => call<Session>("POST", "/sessions", { profile }),
  session: (id: string) => call<Session>("GET", `/sessions/${id}`),
  stop: (id: string) => call<Session>("DELETE", `/sessions/${id}`),
  /** "Keep my desktop": counts as input, so the idle clock starts again. */
  keep: (id: string) => call<Session>("POST", `/sessions/${id}/keep`),
  ticket: (id: string, purpose: "vnc" | "webrtc") =>
    call<Ticket>("POST", `/sessions/${id}/tickets`, { purpose }),
  webrtc: (id: string, ticket: string, sdp: string) =>
    call<{ type: "answer"; sdp: string; ice_servers: IceServer[] }>(
      "POST",
      `/sessions/${id}/webrtc?ticket=${encodeURIComponent(ticket)}`,
      { sdp },
    ),
};

export interface AdminGpu {
  host: number;
  index: number;
  state: "free" | "leased" | "draining" | "unhealthy";
  lease: { session: string; lease_id: number; epoch: number } | null;
  reason: string | null;
}

export interface AdminHost {
  number: number;
  /** The launcher's name; null for hosts without discovery. */
  name: string | null;
  url: string | null;
  state: "up" | "unreachable" | "missing" | "gone";
  drained: boolean;
  last_contact: string | null;
  sessions: number;
  gpus: { index: number; name: string | null; state: AdminGpu["state"] | null; session: string | null }[];
}

export interface AdminSession extends Session {
  address: string;
  /** The host it runs on: its number, and its name with discovery. */
  host?: number | null;
  host_name?: string | null;
}

export interface AuditEntry {
  id: number;
  at: string;
  actor: string;
  action: string;
  subject: string | null;
  details: unknown;
}

/** The admin API, as the operator page uses it: `token` is the admin token. */
export const adminApi = (token: string) => ({
  gpus: () => call<{ gpus: AdminGpu[] }>("GET", "/admin/gpus", undefined, token),
  drain: (host: number, index: number, drain: boolean) =>
    call<unknown>("POST", `/admin/gpus/${host}/${index}/drain`, { drain }, token),
  sessions: () => call<{ sessions: AdminSession[] }>("GET", "/admin/sessions", undefined, token),
  stop: (id: string) => call<unknown>("POST", `/admin/sessions/${id}/stop`, undefined, token),
  credit: (address: string, amount: number, reason: string, idempotencyKey: string) =>
    call<{ address: string; txn_id: string; credit_seconds: number; replayed: boolean }>(
      "POST",
      "/admin/credit",
      { address, amount, reason, idempotency_key: idempotencyKey },
      token,
    ),
  audit: () => call<{ entries: AuditEntry[] }>("GET", "/admin/audit?limit=100", undefined, token),
  hosts: () => call<{ discovery: boolean; hosts: AdminHost[] }>("GET", "/admin/hosts", undefined, token),
  drainHost: (name: string, drain: boolean) =>
    call<unknown>("POST", `/admin/hosts/${encodeURIComponent(name)}/drain`, { drain }, token),
  retireHost: (name: string) => call<unknown>("DELETE", `/admin/hosts/${encodeURIComponent(name)}`, undefined, token),
});

/** The URL of a session's WebSocket at `path` on this origin. */
export function socketUrl(path: string): string {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${BASE}${path}`;
}
