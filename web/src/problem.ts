// What the page says when something fails: the gate's RFC 9457 problems
// (type urn:deskgate:problem:<kind>), wallet (EIP-1193) errors and network
// failures, each turned into a sentence a user can act on.

/** An error answer of the gate's API. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    /** The problem kind: the end of `urn:deskgate:problem:<kind>`. */
    readonly kind: string,
    readonly detail: string | undefined,
    /** The problem's extension members (e.g. `reason`, `retry_after`). */
    readonly extra: Record<string, unknown> = {},
  ) {
    super(detail ?? kind);
  }
}

const SIGN_IN_REASONS: Record<string, string> = {
  signature_mismatch: "The signature is not from this wallet's key. Sign with the account you connected.",
  contract_wallet_rejected: "Your contract wallet did not accept the signature.",
  nonce_expired: "The sign-in request expired. Sign in again.",
  nonce_already_used: "That sign-in was already used. Sign in again.",
  message_expired: "The sign-in request expired. Sign in again.",
  rpc_unavailable: "The gate cannot reach its Ethereum node right now. Try again in a minute.",
  invalid_token: "Your sign-in has ended. Sign in again.",
};

const KINDS: Record<string, string> = {
  unauthenticated: "You are not signed in (or your sign-in expired). Sign in again.",
  "insufficient-credit": "Not enough credit for this profile. Deposit first.",
  "session-exists": "You already have a desktop (or a place in the queue).",
  "rate-limited": "Too many requests. Wait a moment and try again.",
  "deposits-disabled": "This gate takes no deposits right now.",
  "too-many-viewers": "This desktop is already open in four places. Close one and retry.",
  "desktop-unreachable": "The desktop does not answer yet. Retrying…",
  "session-ended": "This desktop has ended.",
  "session-not-running": "The desktop is not running yet.",
  "ticket-refused": "The desktop link expired. Reconnecting…",
  "origin-refused": "This page is not the gate's public address, so the gate refuses it. Open the gate's own URL.",
  "minutes-out-of-range": "Choose a number of minutes the gate sells.",
  "unknown-profile": "That profile does not exist on this gate.",
  "profile-unavailable": "This gate has not enough GPUs for that profile.",
  "payload-too-large": "That request is too large.",
  "not-ready": "The gate is starting or a service it needs is down. Try again in a minute.",
  "sessions-unavailable": "The gate's session service is down. Try again in a minute.",
};

/** The sentence to show for `error`. */
export function describe(error: unknown): string {
  if (error instanceof ApiError) {
    if (error.kind === "sign-in-refused") {
      const reason = String(error.extra.reason ?? "");
      return SIGN_IN_REASONS[reason] ?? `Sign-in refused: ${error.detail ?? reason}`;
    }
    const known = KINDS[error.kind];
    if (known) return known;
    if (error.status >= 500) return `The gate failed (${error.status}). Try again in a minute.`;
    return error.detail ?? `The gate refused: ${error.kind}`;
  }
  const wallet = walletError(error);
  if (wallet) return wallet;
  if (error instanceof TypeError) return "The gate cannot be reached. Check your connection.";
  if (error instanceof Error) return error.message;
  return String(error);
}

/** EIP-1193 and JSON-RPC error codes a wallet answers with. */
function walletError(error: unknown): string | undefined {
  const code = errorCode(error);
  switch (code) {
    case 4001:
      return "You rejected the request in your wallet.";
    case 4100:
      return "Your wallet has not authorised this site. Connect the wallet again.";
    case 4902:
      return "Your wallet does not know this gate's chain. Add it to your wallet (see “Try it” in the README), then retry.";
    case -32002:
      return "Your wallet already has a request open. Look at your wallet.";
    case -32603:
    case -32000:
      return `Your wallet could not send it: ${message(error)}`;
    default:
      return undefined;
  }
}

/** The numeric `code` of an EIP-1193 error, looking through viem's wrappers. */
export function errorCode(error: unknown): number | undefined {
  let e: unknown = error;
  for (let depth = 0; depth < 5 && e && typeof e === "object"; depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "number") return code;
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}

function message(error: unknown): string {
  const e = error as { shortMessage?: string; message?: string };
  return e?.shortMessage ?? e?.message ?? String(error);
}

/** Why a session ended, in words; `reason` is the gate's `end_reason`. */
export function endReason(reason: { kind: string; detail?: unknown } | null | undefined): string {
  switch (reason?.kind) {
    case "user_stopped":
      return "You stopped the desktop.";
    case "credit_exhausted":
      return "Your credit ran out.";
    case "presence_timeout":
      return "No browser was watching, so the desktop was ended.";
    case "idle_timeout":
      return "There was no input for too long, so the desktop was ended to save your credit.";
    case "admin_killed":
      return "An operator ended the desktop.";
    case "lost_on_restart":
      return "The gate restarted and could not recover the desktop.";
    case "container_exited": {
      const d = reason.detail as { code?: number; oom?: boolean } | undefined;
      if (d?.oom) return "The desktop ran out of memory and stopped.";
      return `The desktop stopped by itself (exit code ${d?.code ?? "unknown"}).`;
    }
    case "launch_failed":
      return "The desktop could not be started.";
    case "crashed":
      return "The desktop's supervisor failed; the desktop was ended.";
    default:
      return "The desktop has ended.";
  }
}
