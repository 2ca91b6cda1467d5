(...inputs) => {
  // The link is built on the server; only the browser knows the page's public address (a proxy or a
  // Space may serve the app under another host and path than the server sees).
  inputs[0] = window.location.origin + window.location.pathname;
  return inputs;
}
