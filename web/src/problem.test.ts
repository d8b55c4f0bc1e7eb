import { describe as group, expect, it } from "vitest";
import { ApiError, describe, endReason, errorCode } from "./problem";

group("problems in words", () => {
  it("names the sign-in refusal's reason", () => {
    const e = new ApiError(401, "sign-in-refused", "the signature does not match", {
      reason: "signature_mismatch",
    });
    expect(describe(e)).toMatch(/not from this wallet's key/);
    const unknown = new ApiError(401, "sign-in-refused", "odd", { reason: "new_reason" });
    expect(describe(unknown)).toBe("Sign-in refused: odd");
  });

  it("says what to do about known kinds, and the detail of others", () => {
    expect(describe(new ApiError(402, "insufficient-credit", "x"))).toMatch(/Deposit first/);
    expect(describe(new ApiError(400, "something-new", "the detail"))).toBe("the detail");
    expect(describe(new ApiError(503, "something-new", undefined))).toMatch(/failed \(503\)/);
  });

  it("reads wallet errors through viem's cause chain", () => {
    const rejected = { name: "UserRejectedRequestError", cause: { code: 4001 } };
    expect(errorCode(rejected)).toBe(4001);
    expect(describe(rejected)).toBe("You rejected the request in your wallet.");
    expect(describe({ code: 4902 })).toMatch(/does not know this gate's chain/);
    expect(describe(new TypeError("Failed to fetch"))).toMatch(/cannot be reached/);
  });

  it("says why a session ended", () => {
    expect(endReason({ kind: "credit_exhausted" })).toBe("Your credit ran out.");
    expect(endReason({ kind: "container_exited", detail: { code: 3, oom: false } })).toMatch(/exit code 3/);
    expect(endReason({ kind: "container_exited", detail: { code: 137, oom: true } })).toMatch(/memory/);
    expect(endReason(null)).toBe("The desktop has ended.");
  });
});
