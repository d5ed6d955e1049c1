// The vendor's payments list, kept current without a reload: every second the newest page's rows
// are fetched from the element's data-live-url and swapped in. A fetch that lands on the sign-in
// page (the session ended, or its token was revoked) takes the whole page there.
const REFRESH_MS = 1000;

const body = document.querySelector("tbody[data-live-url]");
if (body) {
  const url = body.dataset.liveUrl;
  let busy = false;
  setInterval(async () => {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const answer = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
      if (answer.redirected || !answer.ok) {
        if (answer.redirected) window.location.assign(answer.url);
        return;
      }
      body.innerHTML = await answer.text();
    } catch (error) {
      // The network blinked: the next tick tries again.
    } finally {
      busy = false;
    }
  }, REFRESH_MS);
}
