// The ask page: streams /v1/chat/completions (server-sent events) and shows the answer, its sources,
// time to first token and tokens per second. Plain JS, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
let controller = null;

function headers() {
  const key = $("api-key").value.trim();
  localStorage.setItem("tritonrag-api-key", key);
  const h = { "Content-Type": "application/json" };
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function loadModels() {
  try {
    const response = await fetch("/v1/models", { headers: headers() });
    if (!response.ok) return;
    const models = (await response.json()).data.filter((m) => m.kind === "rag" || m.kind === "llm");
    models.sort((a, b) => (a.kind === "rag" ? 0 : 1) - (b.kind === "rag" ? 0 : 1));  // rag first: the default
    const chosen = $("model").value;
    $("model").innerHTML = "";
    for (const m of models) {
      const option = new Option(m.kind === "rag" ? `${m.id} (retrieval + LLM)` : `${m.id} (the LLM alone)`, m.id);
      $("model").add(option);
    }
    if (models.some((m) => m.id === chosen)) $("model").value = chosen;
  } catch (e) { /* the default option stays */ }
}

function setStatus(state, text) {
  $("status").dataset.state = state;
  $("status").textContent = text;
}

function showSources(sources) {
  const list = $("sources");
  list.innerHTML = "";
  $("sources-title").hidden = !sources || sources.length === 0;
  for (const source of sources || []) {
    const item = document.createElement("li");
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    summary.innerHTML = `<span class="title"></span> <span class="score"></span>`;
    summary.querySelector(".title").textContent = source.title;
    summary.querySelector(".score").textContent = `score ${Number(source.score).toFixed(3)}`;
    const passage = document.createElement("pre");
    passage.className = "passage";
    passage.textContent = source.text || "(passage text not available)";
    details.append(summary, passage);
    item.append(details);
    list.append(item);
  }
}

// Yields the JSON payload of each `data:` event until [DONE].
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  while (true) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question) return;
  $("answer").textContent = "";
  $("error").hidden = true;
  showSources([]);
  for (const id of ["ttft", "tokens", "tps"]) $(id).textContent = "–";
  setStatus("running", "asking…");
  $("ask").disabled = true;
  $("stop").disabled = false;
  controller = new AbortController();

  const body = {
    model: $("model").value,
    messages: [{ role: "user", content: question }],
    max_tokens: Number($("max-tokens").value) || 200,
    temperature: Number($("temperature").value) || 0,
    stream: true,
    stream_options: { include_usage: true },
  };
  const started = performance.now();
  let first = null, last = null, chunks = 0, usage = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!response.ok) {
      const problem = await response.json().catch(() => ({}));
      throw new Error(`${response.status}: ${problem.error ? problem.error.message : response.statusText}`);
    }
    for await (const chunk of events(response)) {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.sources) showSources(chunk.sources);
      if (chunk.usage) usage = chunk.usage;
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) {
        const now = performance.now();
        if (first === null) {
          first = now;
          $("ttft").textContent = `${Math.round(first - started)} ms`;
        }
        last = now;
        chunks += 1;
        $("answer").textContent += delta.content;
        $("tokens").textContent = chunks;
      }
    }
    const tokens = usage ? usage.completion_tokens : chunks;
    $("tokens").textContent = tokens;
    if (first !== null && last > first && tokens > 1) {
      $("tps").textContent = ((tokens - 1) / ((last - first) / 1000)).toFixed(1);
    }
    setStatus("done", "done");
  } catch (e) {
    if (e.name === "AbortError") {
      setStatus("done", "stopped");
    } else {
      $("error").textContent = e.message;
      $("error").hidden = false;
      setStatus("error", "error");
    }
  } finally {
    $("ask").disabled = false;
    $("stop").disabled = true;
    controller = null;
  }
}

$("api-key").value = localStorage.getItem("tritonrag-api-key") || "";
$("ask-form").addEventListener("submit", ask);
$("stop").addEventListener("click", () => controller && controller.abort());
$("api-key").addEventListener("change", loadModels);
loadModels();
