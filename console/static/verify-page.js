// Wires the console's verification markup to verify.js (no inline script: the page's CSP forbids
// it). The markup, rendered by the server:
//   <section id="verify" data-proof-url="..." data-public-key="hex">
//     <script type="application/json" id="entry-data">{the transfer answer}</script>
//     <button id="verify-button">Verify independently</button>
//     <ol id="verify-steps"></ol> <p id="verify-result" role="status"></p>
//   </section>
//   <section id="consistency" data-proof-url="..." [data-public-key="hex"]>
//     <form> two tree sizes, sent as query parameters under the inputs' names </form>
//     <ol id="consistency-steps"></ol> <p id="consistency-result" role="status"></p>
//   </section>
// The proof URLs answer {inclusion, head} and {first, second, proof}; fetched same-origin only.

import { parseExact, verifyConsistency, verifyEntry } from './verify.js';

const PASSED = 'Passed';
const FAILED = 'Failed';

/** Why the proof could not be fetched, in words (never the raw problem document). */
async function fetchProof(url) {
  let answer;
  try {
    answer = await fetch(url, { credentials: 'same-origin', headers: { Accept: 'application/json' } });
  } catch (error) {
    throw new Error('the proof could not be fetched: the server did not answer');
  }
  const text = await answer.text();
  let body = null;
  try {
    body = parseExact(text);
  } catch (error) {
    body = null;
  }
  if (!answer.ok) {
    const said = body && (body.detail || body.title);
    throw new Error(`the server could not give the proof (${answer.status})${said ? `: ${said}` : ''}`);
  }
  if (body === null || typeof body !== 'object') throw new Error('the server\'s answer is not a proof');
  return body;
}

function render(list, result, outcome) {
  list.replaceChildren(...outcome.steps.map((s) => {
    const item = document.createElement('li');
    item.className = s.ok ? 'step-passed' : 'step-failed';
    const verdict = document.createElement('strong');
    verdict.textContent = `${s.ok ? PASSED : FAILED}: `;
    item.append(verdict, `${s.step} — ${s.detail}`);
    return item;
  }));
  result.textContent = outcome.ok ? 'Verified' : 'Failed';
  result.className = outcome.ok ? 'result-verified' : 'result-failed';
}

function failure(step, error) {
  return { ok: false, steps: [{ step, ok: false, detail: error.message }] };
}

async function runBusy(control, list, result, work) {
  control.disabled = true;
  list.setAttribute('aria-busy', 'true');
  result.textContent = 'Checking…';
  try {
    render(list, result, await work());
  } finally {
    list.removeAttribute('aria-busy');
    control.disabled = false;
  }
}

function publicKeyFor(section) {
  const holder = section.dataset.publicKey ? section : document.querySelector('[data-public-key]');
  return holder ? holder.dataset.publicKey : '';
}

function wireVerify(section) {
  const button = section.querySelector('#verify-button');
  const list = section.querySelector('#verify-steps');
  const result = section.querySelector('#verify-result');
  const data = section.querySelector('#entry-data');
  if (!button || !list || !result || !data) return;
  button.addEventListener('click', () => runBusy(button, list, result, async () => {
    let entry;
    try {
      entry = parseExact(data.textContent);
    } catch (error) {
      return failure('Read the entry shown', new Error('the page\'s entry data is not readable JSON'));
    }
    let answer;
    try {
      answer = await fetchProof(new URL(section.dataset.proofUrl, window.location.href));
    } catch (error) {
      return failure('Fetch the proof', error);
    }
    return verifyEntry(entry, answer.inclusion || {}, answer.head || {}, publicKeyFor(section));
  }));
}

function wireConsistency(section) {
  const form = section.querySelector('form');
  const list = section.querySelector('#consistency-steps') || document.createElement('ol');
  const result = section.querySelector('#consistency-result');
  if (!form || !result) return;
  const submit = form.querySelector('[type=submit], button') || form;
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    runBusy(submit, list, result, async () => {
      const url = new URL(section.dataset.proofUrl, window.location.href);
      for (const [name, value] of new FormData(form)) url.searchParams.set(name, value);
      let answer;
      try {
        answer = await fetchProof(url);
      } catch (error) {
        return failure('Fetch the proof', error);
      }
      return verifyConsistency(answer.first || {}, answer.second || {}, answer.proof || {}, publicKeyFor(section));
    });
  });
}

for (const section of document.querySelectorAll('section#verify')) wireVerify(section);
for (const section of document.querySelectorAll('section#consistency')) wireConsistency(section);
