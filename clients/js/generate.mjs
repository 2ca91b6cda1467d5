// Stream /generate from the GPT-2 app with Gradio's JavaScript client (@gradio/client).
//
//   npm ci --prefix clients/js
//   node clients/js/generate.mjs http://127.0.0.1:7860/ "Every effort moves you" --max_new_tokens 40 --seed 42
//
// The first argument is the app's URL or a Space id ("user/space"). Options are /generate's parameters by
// name (see README.md, "Using the API"); a number for a parameter the app types as a number is passed as
// one (the app's API description says which). Each update is printed as one JSON line {"text": ...} (the
// continuation so far), then {"done": true, "text": ...}; an error from the app ends the script with
// status 1 and the app's message on stderr.

import { Client } from "@gradio/client";

function parseArgs(argv) {
  const [url, prompt, ...rest] = argv;
  if (!url || prompt === undefined) {
    throw new Error('usage: node generate.mjs URL PROMPT [--max_new_tokens N] [--seed S] [--stop "\\n"] ...');
  }
  const params = { prompt };
  for (let i = 0; i < rest.length; i += 2) {
    const flag = rest[i];
    const value = rest[i + 1];
    if (!flag.startsWith("--") || value === undefined) throw new Error(`expected --name value, got ${flag}`);
    params[flag.slice(2).replaceAll("-", "_")] = value;
  }
  return { url, params };
}

// The options as the app's /generate takes them, by the types its API description gives: a number for a
// parameter that is only a number ("int", "float"); the text itself where text is taken too (a seed,
// "int | str | None", is read from its digits: a JavaScript number would round one above 2**53).
async function typed(client, params) {
  const info = await client.view_api();
  const types = Object.fromEntries(
    info.named_endpoints["/generate"].parameters.map((p) => [p.parameter_name, p.python_type?.type ?? ""]),
  );
  const out = {};
  for (const [name, value] of Object.entries(params)) {
    const type = types[name] ?? "str";
    if (/\bstr\b/.test(type) || !/\b(int|float)\b/.test(type)) {
      out[name] = value;
      continue;
    }
    const number = Number(value);
    if (!Number.isFinite(number) || value.trim() === "") {
      throw new Error(`--${name} must be a number, got ${value}`);
    }
    out[name] = number;
  }
  return out;
}

async function main() {
  const { url, params } = parseArgs(process.argv.slice(2));
  // "status" events too (by default only "data" is published): they carry the app's error messages.
  const client = await Client.connect(url, {
    hf_token: process.env.HF_TOKEN || undefined,
    events: ["data", "status"],
  });
  let text = null;
  for await (const event of client.submit("/generate", await typed(client, params))) {
    if (event.type === "data") {
      text = event.data[0];
      console.log(JSON.stringify({ text }));
    } else if (event.type === "status" && event.stage === "error") {
      throw new Error(`${event.title ?? "error"}: ${event.message ?? "the app reported an error"}`);
    } else if (event.type === "status" && event.stage === "complete") {
      break;
    }
  }
  if (text === null) throw new Error("the stream ended without a result");
  console.log(JSON.stringify({ done: true, text }));
}

main()
  .then(() => process.exit(0))
  .catch((err) => {
    console.error(`error: ${err.message ?? err}`);
    process.exit(1);
  });
