// Checks a journal entry and signed tree heads in the browser, trusting neither the server nor
// its page scripts beyond this file: docs/proofs.md and contract v3 "Entries a verifier can
// recompute". A port of client/proof.py (the Python verifier); tests/console/test_verify.py runs
// both on the same real entries and proofs and compares them.
//
// Crypto is the browser's own: WebCrypto SHA-256 for the entry and Merkle hashes, WebCrypto
// Ed25519 for signatures, and the vendored @noble/ed25519 (vendor/noble-ed25519/VENDORED.md)
// only where the browser has no Ed25519. WebCrypto exists only in a secure context (HTTPS or
// localhost); elsewhere every step fails and says so.

const LEAF_PREFIX = 0x00;
const NODE_PREFIX = 0x01;
// The hashed form leaves out a field added after v1 while it holds its default (docs/audit.md):
// v2's kind, refund_of and hold_id; v3's account entries (kind `account`, no postings) carry the
// account and the controls in force from them on, a null one left out like any default.
const DEFAULTS_LEFT_OUT = {
  kind: 'transfer', refund_of: null, hold_id: null,
  account_id: null, account_status: null, min_balance: null, max_balance: null,
};
// The entry's fields a transfer answer shows under their own names; its `id` is `transfer_id`.
const SHOWN_ENTRY_FIELDS = [
  'position', 'from_account_id', 'to_account_id', 'amount', 'currency', 'reference', 'metadata',
  'postings', 'committed_at', 'prev_hash',
];
const TREE_HEAD_VERSION = 'ledger-tree-head-v1';
const ED25519_KEY_BYTES = 32;
const ED25519_SIGNATURE_BYTES = 64;
const NOBLE_URL = new URL('./vendor/noble-ed25519/index.js', import.meta.url);
// RFC 8032 §7.1 test 1's public key: importing it tells whether WebCrypto has Ed25519 at all,
// apart from whether a given key is well formed.
const PROBE_KEY = 'd75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a';

const encoder = new TextEncoder();

/** A failure whose message is meant for the person at the screen. */
class Refused extends Error {}

function subtle() {
  const found = globalThis.crypto && globalThis.crypto.subtle;
  if (!found) {
    throw new Refused('this browser withholds its cryptography (WebCrypto) from pages not served '
      + 'over HTTPS; open the console over HTTPS (or on localhost) to verify');
  }
  return found;
}

// ---- bytes ---------------------------------------------------------------------------------

export function hexToBytes(hex, what, length) {
  if (typeof hex !== 'string' || hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) {
    throw new Refused(`${what} is not hexadecimal`);
  }
  if (length !== undefined && hex.length !== 2 * length) {
    throw new Refused(`${what} is ${hex.length / 2} bytes, not ${length}`);
  }
  const bytes = new Uint8Array(hex.length / 2);
  for (let i = 0; i < bytes.length; i += 1) bytes[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return bytes;
}

export function bytesToHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function asciiBytes(text, what) {
  if (typeof text !== 'string' || !/^[\x00-\x7f]*$/.test(text)) throw new Refused(`${what} is not ASCII text`);
  return encoder.encode(text);
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

function sameBytes(a, b) {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}

async function sha256(...parts) {
  return new Uint8Array(await subtle().digest('SHA-256', concat(...parts)));
}

// ---- the canonical bytes (docs/audit.md) ---------------------------------------------------

/** JSON.parse that keeps integers past 2^53 exact (as BigInt) where the browser shows the
 * source text to a reviver; the canonical form must print every integer as it was sent. */
export function parseExact(text) {
  return JSON.parse(text, (key, value, context) => {
    if (typeof value === 'number' && !Number.isSafeInteger(value) && context && /^-?\d+$/.test(context.source)) {
      return BigInt(context.source);
    }
    return value;
  });
}

function compareCodePoints(a, b) {
  // Python sorts str keys by code point; JS's default sort compares UTF-16 units, which differ
  // for characters above U+FFFF against those in U+E000..U+FFFF.
  const x = Array.from(a, (c) => c.codePointAt(0));
  const y = Array.from(b, (c) => c.codePointAt(0));
  for (let i = 0; i < Math.min(x.length, y.length); i += 1) {
    if (x[i] !== y[i]) return x[i] - y[i];
  }
  return x.length - y.length;
}

const SHORT_ESCAPES = { '"': '\\"', '\\': '\\\\', '\b': '\\b', '\f': '\\f', '\n': '\\n', '\r': '\\r', '\t': '\\t' };

function jsonString(text) {
  // Python's json.dumps(ensure_ascii=True): printable ASCII as is, the short escapes, every other
  // UTF-16 unit (DEL and surrogate halves included) as \uxxxx in lower-case hex.
  let out = '"';
  for (let i = 0; i < text.length; i += 1) {
    const ch = text[i];
    const unit = text.charCodeAt(i);
    if (SHORT_ESCAPES[ch]) out += SHORT_ESCAPES[ch];
    else if (unit >= 0x20 && unit <= 0x7e) out += ch;
    else out += '\\u' + unit.toString(16).padStart(4, '0');
  }
  return out + '"';
}

/** json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True), for the values an
 * entry holds: objects, arrays, strings, integers, booleans and null. */
export function canonicalJson(value) {
  if (value === null) return 'null';
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  if (typeof value === 'bigint') return value.toString();
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value)) {
      throw new Refused(`the number ${value} is not an integer this browser can hold exactly`);
    }
    return String(value);
  }
  if (typeof value === 'string') return jsonString(value);
  if (Array.isArray(value)) return '[' + value.map(canonicalJson).join(',') + ']';
  if (typeof value === 'object') {
    const keys = Object.keys(value).sort(compareCodePoints);
    return '{' + keys.map((k) => jsonString(k) + ':' + canonicalJson(value[k])).join(',') + '}';
  }
  throw new Refused(`a value of type ${typeof value} cannot be in an entry`);
}

/** The journal entry's hashed fields, rebuilt from a transfer answer (client.proof.hashed_body). */
export function hashedBody(entry) {
  if (typeof entry.prev_hash !== 'string' || !Array.isArray(entry.postings)) {
    throw new Refused('the entry shown has no prev_hash and postings, so its hash cannot be recomputed');
  }
  const missing = SHOWN_ENTRY_FIELDS.filter((name) => entry[name] === undefined);
  if (entry.id === undefined) missing.unshift('id');
  if (missing.length) throw new Refused(`the entry shown lacks ${missing.join(', ')}`);
  const body = { transfer_id: entry.id };
  for (const name of SHOWN_ENTRY_FIELDS) body[name] = entry[name];
  for (const [name, fallback] of Object.entries(DEFAULTS_LEFT_OUT)) {
    const shown = entry[name] === undefined ? fallback : entry[name];
    if (shown !== fallback) body[name] = shown;
  }
  return body;
}

/** hex SHA-256(prev_hash as 64 ASCII hex characters ‖ canonical bytes). */
export async function entryHash(entry) {
  const canonical = asciiBytes(canonicalJson(hashedBody(entry)), 'the canonical form');
  return bytesToHex(await sha256(asciiBytes(entry.prev_hash, 'prev_hash'), canonical));
}

// ---- Merkle proofs (RFC 9162) ----------------------------------------------------------------

export async function leafHash(entryHashHex) {
  return sha256(Uint8Array.of(LEAF_PREFIX), hexToBytes(entryHashHex, 'the entry hash', 32));
}

function node(left, right) {
  return sha256(Uint8Array.of(NODE_PREFIX), left, right);
}

function count(value, what) {
  // BigInt: JS bit operators cut Numbers to 32 bits, and tree sizes may pass 2^31.
  if ((typeof value === 'number' && Number.isSafeInteger(value)) || typeof value === 'bigint') return BigInt(value);
  throw new Refused(`${what} is not an integer`);
}

/** RFC 9162 §2.1.3.2: `leaf` is leaf `index` (0-based) of the tree of `size` leaves with `root`. */
export async function merkleInclusion(index, size, leaf, path, root) {
  let fn = count(index, 'the leaf index');
  let sn = count(size, 'the tree size') - 1n;
  if (fn < 0n || fn > sn) return false;
  let digest = leaf;
  for (const sibling of path) {
    if (sn === 0n) return false;
    if ((fn & 1n) === 1n || fn === sn) {
      digest = await node(sibling, digest);
      while ((fn & 1n) === 0n && fn !== 0n) [fn, sn] = [fn >> 1n, sn >> 1n];
    } else {
      digest = await node(digest, sibling);
    }
    [fn, sn] = [fn >> 1n, sn >> 1n];
  }
  return sn === 0n && sameBytes(digest, root);
}

/** RFC 9162 §2.1.4.2: the tree of `oldSize` leaves is a prefix of the tree of `size`. */
export async function merkleConsistency(oldSize, size, oldRoot, newRoot, proof) {
  const m = count(oldSize, 'the first tree size');
  const n = count(size, 'the second tree size');
  if (m < 1n || m > n) return false;
  if (m === n) return proof.length === 0 && sameBytes(oldRoot, newRoot);
  if (proof.length === 0) return false;
  const path = (m & (m - 1n)) === 0n ? [oldRoot, ...proof] : [...proof];
  let fn = m - 1n;
  let sn = n - 1n;
  while ((fn & 1n) === 1n) [fn, sn] = [fn >> 1n, sn >> 1n];
  let fr = path[0];
  let sr = path[0];
  for (const c of path.slice(1)) {
    if (sn === 0n) return false;
    if ((fn & 1n) === 1n || fn === sn) {
      [fr, sr] = [await node(c, fr), await node(c, sr)];
      while ((fn & 1n) === 0n && fn !== 0n) [fn, sn] = [fn >> 1n, sn >> 1n];
    } else {
      sr = await node(sr, c);
    }
    [fn, sn] = [fn >> 1n, sn >> 1n];
  }
  return sameBytes(fr, oldRoot) && sameBytes(sr, newRoot) && sn === 0n;
}

// ---- signed tree heads -----------------------------------------------------------------------

/** The ASCII bytes a tree head's Ed25519 signature covers (docs/proofs.md). */
export function treeHeadBytes(head) {
  const lines = [TREE_HEAD_VERSION, String(count(head.tree_size, 'the tree size')), head.root_hash, head.hash,
    head.signed_at];
  return asciiBytes(lines.map((line) => `${line}\n`).join(''), 'the tree head');
}

let webCryptoEd25519;

async function hasWebCryptoEd25519() {
  if (webCryptoEd25519 === undefined) {
    try {
      await subtle().importKey('raw', hexToBytes(PROBE_KEY, 'the probe key'), { name: 'Ed25519' }, false, ['verify']);
      webCryptoEd25519 = true;
    } catch (error) {
      if (error instanceof Refused) throw error;
      webCryptoEd25519 = false;
    }
  }
  return webCryptoEd25519;
}

async function nobleVerify(signature, message, key) {
  const noble = await import(NOBLE_URL.href);
  noble.hashes.sha512Async = async (bytes) => new Uint8Array(await subtle().digest('SHA-512', bytes));
  return noble.verifyAsync(signature, message, key, { zip215: false });
}

/** Ed25519 verification with WebCrypto, or the vendored noble where the browser has none
 * (`ed25519: 'noble'` forces it, 'webcrypto' refuses the fallback). */
async function ed25519Verify(signature, message, key, ed25519 = 'auto') {
  const native = ed25519 === 'webcrypto' || (ed25519 === 'auto' && await hasWebCryptoEd25519());
  if (!native) return nobleVerify(signature, message, key);
  let imported;
  try {
    imported = await subtle().importKey('raw', key, { name: 'Ed25519' }, false, ['verify']);
  } catch (error) {
    if (error.name === 'NotSupportedError') throw new Refused('this browser\'s WebCrypto has no Ed25519');
    return false;  // not a point on the curve: no signature verifies under it
  }
  return subtle().verify({ name: 'Ed25519' }, imported, signature, message);
}

async function signatureStep(label, head, publicKeyHex, options) {
  if (!publicKeyHex) {
    throw new Refused('the page shows no published public key of the service, so the signature cannot be '
      + 'checked; ask the operator for it (ledger checkpoint --export-public-key)');
  }
  const key = hexToBytes(publicKeyHex, 'the published public key', ED25519_KEY_BYTES);
  const signature = hexToBytes(head.signature, `the ${label} signature`, ED25519_SIGNATURE_BYTES);
  const good = await ed25519Verify(signature, treeHeadBytes(head), key, options.ed25519);
  if (!good) throw new Refused(`the ${label} of size ${head.tree_size} is not signed by the published key`);
  return `the ${label} of size ${head.tree_size}, signed at ${head.signed_at}, carries a valid Ed25519 `
    + `signature by the published key ${publicKeyHex.slice(0, 16)}…`;
}

// ---- the checks the page shows ------------------------------------------------------------

async function step(steps, name, check) {
  // Every step runs and reports, so the page shows all that holds and all that does not.
  try {
    steps.push({ step: name, ok: true, detail: await check() });
  } catch (error) {
    const detail = error instanceof Refused ? error.message : `the check could not run: ${error && error.message}`;
    steps.push({ step: name, ok: false, detail });
  }
}

function outcome(steps) {
  return { ok: steps.length > 0 && steps.every((s) => s.ok), steps };
}

function hashList(hashes, what) {
  if (!Array.isArray(hashes)) throw new Refused(`the proof has no list of ${what}es`);
  return hashes.map((h, i) => hexToBytes(h, `${what} ${i + 1}`, 32));
}

async function hashStep(entry) {
  const recomputed = await entryHash(entry);
  if (recomputed !== entry.hash) {
    throw new Refused(`the fields shown hash to ${recomputed}, not to the entry's hash ${entry.hash}`);
  }
  return `SHA-256 of prev_hash and the canonical fields is ${recomputed}, the entry's hash`;
}

async function leafStep(entry, inclusion) {
  const leaf = bytesToHex(await leafHash(entry.hash));
  if (inclusion.leaf_hash !== leaf) {
    throw new Refused(`the proof is for leaf ${inclusion.leaf_hash}, not this entry's ${leaf}`);
  }
  if (inclusion.position !== entry.position) {
    throw new Refused(`the proof is for position ${inclusion.position}, the entry is at ${entry.position}`);
  }
  return `leaf ${leaf} at position ${entry.position}`;
}

async function rootStep(entry, inclusion, head) {
  const position = count(entry.position, 'the position');
  if (position > count(head.tree_size, 'the tree size')) {
    throw new Refused(`position ${entry.position} is newer than the latest signed tree head (${head.tree_size} `
      + 'entries); try again after the next signature');
  }
  if (inclusion.tree_size !== head.tree_size) {
    throw new Refused(`the proof is for a tree of ${inclusion.tree_size} entries, the head has ${head.tree_size}`);
  }
  const path = hashList(inclusion.audit_path, 'audit path hash');
  const root = hexToBytes(head.root_hash, 'the head\'s root hash', 32);
  if (!await merkleInclusion(position - 1n, head.tree_size, await leafHash(entry.hash), path, root)) {
    throw new Refused(`the audit path does not lead from this entry to the root ${head.root_hash}`);
  }
  return `${path.length} hashes lead to the root ${head.root_hash} of the tree of ${head.tree_size} entries`;
}

async function extensionStep(first, second, proof) {
  const inOrder = count(first.tree_size, 'the first tree size') <= count(second.tree_size, 'the second tree size');
  const [old, now] = inOrder ? [first, second] : [second, first];
  const same = old.tree_size === now.tree_size;
  if (!same && (proof.from_size !== old.tree_size || proof.to_size !== now.tree_size)) {
    throw new Refused(`the proof is from ${proof.from_size} to ${proof.to_size} entries, the heads have `
      + `${old.tree_size} and ${now.tree_size}`);
  }
  const path = same ? [] : hashList(proof.proof, 'consistency proof hash');
  const roots = [old, now].map((h) => hexToBytes(h.root_hash, `the root of the tree of ${h.tree_size}`, 32));
  if (!await merkleConsistency(old.tree_size, now.tree_size, roots[0], roots[1], path)) {
    throw new Refused(`the tree of ${now.tree_size} entries does not extend the tree of ${old.tree_size}: `
      + 'the history was rewritten, or the proof is wrong');
  }
  return `the tree of ${old.tree_size} entries is a prefix of the tree of ${now.tree_size} (${path.length} hashes)`;
}

/** Verify `entry` (a transfer answer) against its inclusion proof under `head`, a signed tree head
 * checked with the pinned key `publicKeyHex` (never the key the head names).
 * options.ed25519: 'auto' (default), 'webcrypto' or 'noble'. */
export async function verifyEntry(entry, inclusion, head, publicKeyHex, options = {}) {
  const steps = [];
  await step(steps, 'Recompute the entry\'s hash from the fields shown', () => hashStep(entry));
  await step(steps, 'Check the proof is for this entry', () => leafStep(entry, inclusion));
  await step(steps, 'Recompute the tree root from the audit path', () => rootStep(entry, inclusion, head));
  await step(steps, 'Check the tree head\'s signature with the published key',
    () => signatureStep('tree head', head, publicKeyHex, options));
  return outcome(steps);
}

/** Verify that the signed head `second` extends the signed head `first` (either order) with the
 * RFC 9162 consistency `proof` ({from_size, to_size, proof: [hex]}), both signed by the pinned key. */
export async function verifyConsistency(first, second, proof, publicKeyHex, options = {}) {
  const steps = [];
  await step(steps, 'Check the first tree head\'s signature with the published key',
    () => signatureStep('first tree head', first, publicKeyHex, options));
  await step(steps, 'Check the second tree head\'s signature with the published key',
    () => signatureStep('second tree head', second, publicKeyHex, options));
  await step(steps, 'Check the larger tree extends the smaller one', () => extensionStep(first, second, proof));
  return outcome(steps);
}
