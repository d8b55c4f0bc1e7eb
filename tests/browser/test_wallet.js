// The tests' own browser wallet: an EIP-1193 provider announced through EIP-6963 like
// an extension, whose requests are answered on the host by an anvil node with one of
// its unlocked dev accounts (anvil signs personal_sign and eth_sendTransaction for
// them). Used by the drivers of the gate's page.

let rpcId = 0;

/** One JSON-RPC call to `url`; throws with the node's message on an error answer. */
async function rpc(url, method, params) {
  const response = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ jsonrpc: '2.0', id: ++rpcId, method, params: params ?? [] }),
  });
  const answer = await response.json();
  if (answer.error) throw new Error(`${method}: ${answer.error.message}`);
  return answer.result;
}

/**
 * Gives every page of `context` a wallet holding `account` on the node at `walletRpc`.
 * With `knowsChain: false` the wallet starts on chain 1 and answers a switch to the
 * anvil chain with 4902 (unknown chain) until the page adds it with `walletRpc` as
 * its RPC URL, as MetaMask does. `log` hears each request's method.
 */
async function injectWallet(context, walletRpc, account, log = () => {}, { knowsChain = true } = {}) {
  const chainId = await rpc(walletRpc, 'eth_chainId');
  let known = knowsChain;
  let current = knowsChain ? chainId : '0x1';
  // Errors cross into the page as values: an Error thrown here would lose its code.
  const refuse = (code, message) => ({ deskgateWalletError: true, code, message });
  await context.exposeFunction('deskgateTestWallet', async (method, params) => {
    log(`wallet ${account.slice(0, 6)}: ${method}`);
    switch (method) {
      case 'eth_requestAccounts':
      case 'eth_accounts':
        return [account];
      case 'eth_chainId':
        return current;
      case 'wallet_addEthereumChain': {
        const added = params[0];
        if (String(added.chainId).toLowerCase() !== chainId.toLowerCase()) return refuse(4902, 'not the anvil chain');
        const bare = (u) => String(u).replace(/\/$/, '');
        if (!added.rpcUrls || bare(added.rpcUrls[0]) !== bare(walletRpc)) {
          return refuse(-32602, `unexpected RPC URL ${JSON.stringify(added.rpcUrls)}`);
        }
        known = true;
        return null;
      }
      case 'wallet_switchEthereumChain':
        if (String(params[0].chainId).toLowerCase() !== chainId.toLowerCase()) return refuse(4902, 'unknown chain');
        if (!known) return refuse(4902, 'Unrecognized chain ID; add it first');
        current = chainId;
        return null;
      default:
        return rpc(walletRpc, method, params);
    }
  });
  await context.addInitScript(() => {
    const provider = {
      request: async ({ method, params }) => {
        const answer = await window.deskgateTestWallet(method, params);
        if (answer && answer.deskgateWalletError) {
          throw Object.assign(new Error(answer.message), { code: answer.code });
        }
        return answer;
      },
      on: () => {},
      removeListener: () => {},
    };
    const info = {
      uuid: '6f1b0e0c-0000-4000-8000-00000000d35c',
      name: 'deskgate test wallet',
      icon: 'data:image/svg+xml,%3Csvg xmlns=%22http://www.w3.org/2000/svg%22 viewBox=%220 0 1 1%22%3E%3Crect width=%221%22 height=%221%22 fill=%22%232456d6%22/%3E%3C/svg%3E',
      rdns: 'dev.deskgate.test-wallet',
    };
    const announce = () =>
      window.dispatchEvent(new CustomEvent('eip6963:announceProvider', { detail: Object.freeze({ info, provider }) }));
    window.addEventListener('eip6963:requestProvider', announce);
    announce();
  });
}

/** anvil's first dev accounts (public test keys). */
const DEV_ACCOUNTS = [
  '0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266',
  '0x70997970C51812dc3A010C7d01b50e0d17dc79C8',
  '0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC',
  '0x90F79bf6EB2c4f870365E785982E1f101E93b906',
];

module.exports = { rpc, injectWallet, DEV_ACCOUNTS };
