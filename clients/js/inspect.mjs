// Look inside one token of a text with Gradio's JavaScript client (@gradio/client): the app's /inspect.
//
//   npm ci --prefix clients/js
//   node clients/js/inspect.mjs http://127.0.0.1:7860/ "Every effort moves you" 3 [MODEL]
//
// Arguments: the app's URL or a Space id ("user/space"), the text, then optionally the token's index
// (-1, the default, for the last) and a model name. Prints /inspect's JSON object on one line (tokens,
// position, offset, attention, lens, writes: see README.md, "Looking inside"); an error from the app
// ends the script with status 1 and the app's message on stderr.

import { Client } from "@gradio/client";

async function main() {
  const [url, text, position, model] = process.argv.slice(2);
  if (!url || text === undefined) {
    throw new Error("usage: node inspect.mjs URL TEXT [POSITION] [MODEL]");
  }
  const params = { text };
  // A number is sent as one; anything else as it was typed, for the app to say what it takes.
  if (position !== undefined) params.position = /^-?\d+$/.test(position) ? Number(position) : position;
  if (model !== undefined) params.model = model;
  const client = await Client.connect(url, { hf_token: process.env.HF_TOKEN || undefined });
  const result = await client.predict("/inspect", params);
  console.log(JSON.stringify(result.data[0]));
}

main()
  .then(() => process.exit(0))
  .catch((err) => {
    console.error(`error: ${err.message ?? err}`);
    process.exit(1);
  });
