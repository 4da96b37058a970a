// The tts-server web page. Plain JavaScript, no build step. User text and anything the
// server sends are only ever set through textContent or attributes, never as HTML.

import {
  Envelope,
  PcmStreamPlayer,
  base64Bytes,
  captionCues,
  cleanWords,
  ndjsonEvents,
  pcmToFloats,
  toVtt,
  utf16Offsets,
  wavBlob,
  wordPosition,
} from "./audio.js";
import { pickLanguage, translate } from "./i18n.js";

const STATUS_POLL_MS = 5000;
const HISTORY_LIMIT = 10;
const EXCERPT_CHARS = 90;
const TOKEN_KEY = "tts.token"; // sessionStorage: this tab only
const LANG_KEY = "tts.lang"; // localStorage
const PREFS_KEY = "tts.prefs"; // localStorage: voice, speed, format, stream (never text)
const EXTENSIONS = {
  wav: "wav",
  pcm: "pcm",
  mp3: "mp3",
  opus: "opus",
  aac: "aac",
  flac: "flac",
  vtt: "vtt",
};
// The answers that carry word timings ("timestamps": "words"): a stream of NDJSON events,
// or one JSON body with the audio in base64. Anything else is plain audio (a server
// without timings), played as before.
const NDJSON_TYPE = "application/x-ndjson";
const JSON_TYPE = "application/json";
const MIME_TYPES = {
  wav: "audio/wav",
  mp3: "audio/mpeg",
  opus: "audio/ogg",
  aac: "audio/aac",
  flac: "audio/flac",
  pcm: "audio/pcm",
};

const $ = (id) => document.getElementById(id);
const els = {
  conn: $("conn"),
  connText: $("conn-text"),
  langToggle: $("lang-toggle"),
  banner: $("degraded-banner"),
  authPanel: $("auth-panel"),
  token: $("token"),
  tokenForget: $("token-forget"),
  form: $("tts-form"),
  text: $("text"),
  counter: $("char-count"),
  voice: $("voice"),
  speed: $("speed"),
  speedValue: $("speed-value"),
  speedReset: $("speed-reset"),
  format: $("format"),
  formatHint: $("format-hint"),
  stream: $("stream"),
  synth: $("synthesize"),
  stop: $("stop"),
  status: $("status"),
  error: $("error"),
  errorText: $("error-text"),
  errorDetail: $("error-detail"),
  result: $("result"),
  resultEmpty: $("result-empty"),
  resultBody: $("result-body"),
  resultText: $("result-text"),
  wave: $("wave"),
  player: $("player"),
  metricFirst: $("m-first"),
  metricTotal: $("m-total"),
  metricDuration: $("m-duration"),
  metricCache: $("m-cache"),
  metricEngine: $("m-engine"),
  metricVoice: $("m-voice"),
  metricServer: $("m-server"),
  download: $("download"),
  subtitles: $("subtitles"),
  timingsNote: $("timings-note"),
  history: $("history"),
  historyEmpty: $("history-empty"),
  historyClear: $("history-clear"),
};

const state = {
  lang: "en",
  status: null, // the last /ui/status answer
  connection: "connecting",
  voices: [],
  defaultVoice: "",
  voicesLoaded: false,
  voicesRequest: 0,
  voicesUnreachable: false, // the last voice list request never reached the server
  prefs: {},
  job: null, // the synthesis in flight
  live: null, // the PcmStreamPlayer still playing
  current: null, // what the result panel shows (a job, then its history entry)
  history: [],
  statusMessage: null, // {key, params}
  errorMessage: null, // {key, params, detail}
  nextId: 1,
};

// ---- small utilities ----------------------------------------------------------------------

function t(key, params) {
  return translate(state.lang, key, params);
}

function storageGet(storage, key) {
  try {
    return storage.getItem(key);
  } catch {
    return null;
  }
}

function storageSet(storage, key, value) {
  try {
    if (value === null || value === "") storage.removeItem(key);
    else storage.setItem(key, value);
  } catch {
    // storage disabled: the page still works, it just forgets
  }
}

/** Characters as the server counts them (code points, not UTF-16 units). */
function countChars(text) {
  let count = 0;
  for (const _ of text) count += 1;
  return count;
}

function excerpt(text) {
  const flat = text.replace(/\s+/g, " ").trim();
  const chars = Array.from(flat);
  return chars.length > EXCERPT_CHARS ? `${chars.slice(0, EXCERPT_CHARS).join("")}…` : flat;
}

function formatMs(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return "—";
  if (ms < 1000) return t("unit_ms", { v: Math.max(1, Math.round(ms)) });
  return t("unit_s", { v: (ms / 1000).toFixed(2) });
}

function formatSeconds(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "—";
  return t("unit_s", { v: seconds.toFixed(2) });
}

function positiveNumber(value) {
  const number = Number.parseFloat(value);
  return Number.isFinite(number) && number > 0 ? number : null;
}

/** Retry-After as whole seconds (delta-seconds or an HTTP date), or null. */
function retryAfterSeconds(value) {
  if (!value) return null;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number.parseInt(trimmed, 10);
  const date = Date.parse(trimmed);
  return Number.isNaN(date) ? null : Math.max(1, Math.ceil((date - Date.now()) / 1000));
}

/** "queue;dur=1.2, synth;dur=300" -> {queue: 1.2, synth: 300} */
function parseServerTiming(header) {
  const timings = {};
  for (const part of (header || "").split(",")) {
    const [name, ...params] = part.trim().split(";");
    const duration = params.map((p) => p.trim()).find((p) => p.startsWith("dur="));
    if (name && duration) timings[name.trim()] = Number.parseFloat(duration.slice(4));
  }
  return timings;
}

function fileName(voice, format, date) {
  const pad = (n) => String(n).padStart(2, "0");
  const stamp =
    `${date.getFullYear()}${pad(date.getMonth() + 1)}${pad(date.getDate())}-` +
    `${pad(date.getHours())}${pad(date.getMinutes())}${pad(date.getSeconds())}`;
  const safeVoice = (voice || "voice").replace(/[^A-Za-z0-9_.-]+/g, "_").slice(0, 60);
  return `tts-${safeVoice}-${stamp}.${EXTENSIONS[format] || "bin"}`;
}

function languageName(code) {
  if (!code) return "—";
  try {
    const names = new Intl.DisplayNames([state.lang === "zh" ? "zh-CN" : "en"], {
      type: "language",
    });
    const name = names.of(code.replace("_", "-"));
    return name && name !== code ? `${name} · ${code}` : code;
  } catch {
    return code;
  }
}

function formatLabel(format) {
  if (format === "pcm") return t("format_pcm");
  if (format === "opus") return "Opus";
  return format.toUpperCase();
}

// ---- language ------------------------------------------------------------------------------

function applyLanguage() {
  document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
  document.title = t("page_title");
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const [attribute, dataKey] of [
    ["placeholder", "i18nPlaceholder"],
    ["title", "i18nTitle"],
    ["aria-label", "i18nAriaLabel"],
  ]) {
    for (const el of document.querySelectorAll(`[data-i18n-${attribute}]`)) {
      el.setAttribute(attribute, t(el.dataset[dataKey]));
    }
  }
  els.langToggle.setAttribute("lang", state.lang === "zh" ? "en" : "zh-CN");
  renderVoices();
  renderFormats();
  renderSpeed();
  renderCounter();
  renderFormatHint();
  renderConnection();
  renderButtons();
  renderMessages();
  renderResult();
  renderHistory();
}

function toggleLanguage() {
  state.lang = state.lang === "en" ? "zh" : "en";
  storageSet(localStorage, LANG_KEY, state.lang);
  applyLanguage();
}

// ---- messages --------------------------------------------------------------------------------

function setStatus(key, params = {}) {
  state.statusMessage = key ? { key, params } : null;
  renderMessages();
}

function showError(key, params = {}, detail = "") {
  state.errorMessage = { key, params, detail };
  state.statusMessage = null;
  renderMessages();
}

function clearError() {
  state.errorMessage = null;
  renderMessages();
}

function renderMessages() {
  const status = state.statusMessage;
  els.status.textContent = status ? t(status.key, status.params) : "";
  const error = state.errorMessage;
  els.errorText.textContent = error ? t(error.key, error.params) : "";
  els.errorDetail.textContent = error ? error.detail : "";
  els.error.classList.toggle("visible", Boolean(error));
}

// ---- server status and degradation ------------------------------------------------------

async function pollStatus() {
  try {
    const response = await fetch("/ui/status", {
      cache: "no-store",
      headers: { Accept: "application/json" },
    });
    if (!response.ok) throw new Error(`status ${response.status}`);
    applyStatus(await response.json());
  } catch {
    state.connection = "offline";
    renderConnection();
  }
}

function scheduleStatusPolls() {
  window.setInterval(() => {
    if (!document.hidden) pollStatus();
  }, STATUS_POLL_MS);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) pollStatus();
  });
}

function applyStatus(status) {
  const first = state.status === null;
  // Back after an outage: fetch the voice list again (not after 401/429: no retry loops).
  if (!first && state.voicesUnreachable && !state.voicesLoaded) loadVoices();
  state.status = status;
  state.connection = status.preview_enabled === false ? "degraded" : "ready";
  if (status.auth_required) els.authPanel.hidden = false;
  els.banner.hidden = status.preview_enabled !== false;
  if (first) {
    els.speed.min = String(status.min_speed ?? 0.25);
    els.speed.max = String(status.max_speed ?? 4);
    const speed = positiveNumber(state.prefs.speed) ?? 1;
    els.speed.value = String(Math.min(Math.max(speed, Number(els.speed.min)), Number(els.speed.max)));
  }
  renderFormats();
  renderSpeed();
  renderCounter();
  renderConnection();
  renderButtons();
}

function renderConnection() {
  els.conn.dataset.state = state.connection;
  els.connText.textContent = t(`conn_${state.connection}`);
}

// ---- voices ---------------------------------------------------------------------------------

function authHeaders() {
  const token = (storageGet(sessionStorage, TOKEN_KEY) || "").trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function loadVoices() {
  const request = (state.voicesRequest += 1);
  let response;
  try {
    response = await fetch("/api/voices", {
      cache: "no-store",
      headers: { Accept: "application/json", ...authHeaders() },
    });
  } catch {
    if (request === state.voicesRequest) {
      state.voicesUnreachable = true;
      setStatus("status_voices_failed");
    }
    return;
  }
  if (request !== state.voicesRequest) return;
  state.voicesUnreachable = false;
  if (response.status === 401) {
    askForToken(false);
    return;
  }
  if (!response.ok) {
    setStatus("status_voices_failed");
    return;
  }
  const data = await response.json();
  if (request !== state.voicesRequest) return;
  state.voices = Array.isArray(data.voices) ? data.voices : [];
  state.defaultVoice = typeof data.default === "string" ? data.default : "";
  state.voicesLoaded = true;
  if (state.errorMessage && state.errorMessage.key.startsWith("err_auth")) clearError();
  if (state.statusMessage?.key === "status_voices_failed") setStatus(null);
  renderVoices();
}

function renderVoices() {
  const select = els.voice;
  const wanted = select.value || state.prefs.voice || state.defaultVoice;
  select.replaceChildren();
  if (state.voices.length === 0) {
    const option = document.createElement("option");
    option.value = "";
    option.textContent = t("voice_default_only");
    select.append(option);
    return;
  }
  const byLanguage = new Map();
  for (const voice of state.voices) {
    voice.name = String(voice.name ?? "");
    const language = String(voice.language || "");
    if (!byLanguage.has(language)) byLanguage.set(language, []);
    byLanguage.get(language).push(voice);
  }
  // The default voice (and its language) first, the rest alphabetically.
  const isDefault = (voice) => voice.name === state.defaultVoice;
  const defaultLanguage = String(state.voices.find(isDefault)?.language || "");
  const languages = [...byLanguage.keys()].sort(
    (a, b) => (b === defaultLanguage) - (a === defaultLanguage) || a.localeCompare(b),
  );
  for (const language of languages) {
    const group = document.createElement("optgroup");
    group.label = languageName(language);
    const voices = byLanguage
      .get(language)
      .sort((a, b) => isDefault(b) - isDefault(a) || a.name.localeCompare(b.name));
    for (const voice of voices) {
      const option = document.createElement("option");
      option.value = voice.name;
      const quality = t(`quality_${String(voice.quality || "").replace("-", "_")}`);
      const params = {
        name: voice.name,
        engine: voice.engine || "?",
        quality: quality.startsWith("quality_") ? voice.quality || "?" : quality,
        speakers: Array.isArray(voice.speakers) ? voice.speakers.length : 0,
      };
      const label = t(params.speakers > 1 ? "voice_option_speakers" : "voice_option", params);
      // A voice whose licence forbids commercial use says so in the list; the licence
      // itself is the option's tooltip.
      option.textContent =
        voice.commercial_use === false ? t("voice_noncommercial", { option: label }) : label;
      if (voice.license) option.title = String(voice.license);
      group.append(option);
    }
    select.append(group);
  }
  const names = new Set(state.voices.map((voice) => voice.name));
  const aliasTarget = state.voices.find((voice) => (voice.aliases || []).includes(wanted));
  select.value = names.has(wanted) ? wanted : aliasTarget ? aliasTarget.name : select.options[0].value;
}

function selectedVoice() {
  const name = els.voice.value || state.defaultVoice;
  return state.voices.find((voice) => voice.name === name) || null;
}

// ---- controls --------------------------------------------------------------------------------

function renderFormats() {
  const formats = state.status?.formats?.length ? state.status.formats : ["wav", "pcm"];
  const key = `${state.lang}:${formats.join(",")}`;
  if (els.format.dataset.key === key) return; // unchanged: keep an open list open
  els.format.dataset.key = key;
  const wanted = els.format.value || state.prefs.format || "wav";
  els.format.replaceChildren();
  for (const format of formats) {
    const option = document.createElement("option");
    option.value = format;
    option.textContent = formatLabel(format);
    els.format.append(option);
  }
  els.format.value = formats.includes(wanted) ? wanted : formats.includes("wav") ? "wav" : formats[0];
}

function renderSpeed() {
  const value = Number(els.speed.value).toFixed(2);
  const label = t("speed_value", { v: value });
  els.speedValue.textContent = label;
  els.speed.setAttribute("aria-valuetext", label);
  els.speedReset.hidden = Number(els.speed.value) === 1;
}

function renderCounter() {
  const max = state.status?.max_text_chars;
  const count = countChars(els.text.value);
  const over = max ? count - max : 0;
  const params = { n: count.toLocaleString(), max: max ? max.toLocaleString() : "…", over };
  els.counter.textContent = t(over > 0 ? "counter_over" : "counter", params);
  els.counter.setAttribute("aria-label", t("counter_label", params));
  els.counter.classList.toggle("near", Boolean(max) && over <= 0 && count > max * 0.9);
  els.counter.classList.toggle("over", over > 0);
  els.text.setAttribute("aria-invalid", over > 0 ? "true" : "false");
}

function renderFormatHint() {
  els.format.disabled = els.stream.checked;
  els.formatHint.textContent = t(els.stream.checked ? "format_hint_stream" : "format_hint_plain");
}

function renderButtons() {
  const busy = state.job !== null;
  const previewOff = state.status?.preview_enabled === false;
  els.synth.disabled = busy || previewOff;
  els.synth.textContent = t(busy ? "synth_busy" : "synth_button");
  els.synth.classList.toggle("busy", busy);
  els.stop.disabled = !busy && !(state.live && state.live.playing) && els.player.paused;
}

function savePrefs() {
  state.prefs = {
    voice: els.voice.value,
    speed: Number(els.speed.value),
    format: els.format.value,
    stream: els.stream.checked,
  };
  storageSet(localStorage, PREFS_KEY, JSON.stringify(state.prefs));
}

function loadPrefs() {
  try {
    const prefs = JSON.parse(storageGet(localStorage, PREFS_KEY) || "{}");
    state.prefs = prefs && typeof prefs === "object" ? prefs : {};
  } catch {
    state.prefs = {};
  }
  if (typeof state.prefs.stream === "boolean") els.stream.checked = state.prefs.stream;
}

// ---- auth ------------------------------------------------------------------------------------

function askForToken(focus) {
  els.authPanel.hidden = false;
  const hasToken = Boolean(authHeaders().Authorization);
  showError(hasToken ? "err_auth_invalid" : "err_auth_required");
  if (focus) els.token.focus();
}

let tokenTimer = 0;
function onTokenInput() {
  storageSet(sessionStorage, TOKEN_KEY, els.token.value.trim());
  window.clearTimeout(tokenTimer);
  tokenTimer = window.setTimeout(() => {
    if (!state.voicesLoaded && els.token.value.trim()) loadVoices();
  }, 400);
}

function forgetToken() {
  els.token.value = "";
  storageSet(sessionStorage, TOKEN_KEY, null);
  setStatus("token_forgotten");
  els.token.focus();
}

// ---- audio context -----------------------------------------------------------------------

let audioContext = null;

/** Created or resumed inside the click (a user gesture), at the voice's sample rate. */
function audioContextFor(sampleRate) {
  const AudioContextClass = window.AudioContext || window.webkitAudioContext;
  if (!AudioContextClass) return null;
  if (audioContext && sampleRate && audioContext.sampleRate !== sampleRate) {
    audioContext.close().catch(() => {});
    audioContext = null;
  }
  if (!audioContext) {
    try {
      audioContext = sampleRate ? new AudioContextClass({ sampleRate }) : new AudioContextClass();
    } catch {
      audioContext = new AudioContextClass();
    }
  }
  if (audioContext.state === "suspended") audioContext.resume().catch(() => {});
  return audioContext;
}

function suspendAudioWhenIdle() {
  if (audioContext && !state.live && !state.job && audioContext.state === "running") {
    audioContext.suspend().catch(() => {});
  }
}

function stopPlayback() {
  if (state.live) {
    state.live.stop();
    state.live = null;
  }
  if (!els.player.paused) els.player.pause();
  setPlayback("idle");
}

function setPlayback(value) {
  els.result.dataset.playback = value;
  renderButtons();
  waveform.changed();
  highlight.changed();
}

// ---- synthesis ------------------------------------------------------------------------------

async function synthesize() {
  if (state.job) return;
  clearError();
  const text = els.text.value;
  const max = state.status?.max_text_chars;
  const count = countChars(text);
  if (!text.trim()) {
    showError("err_empty_text");
    els.text.focus();
    return;
  }
  if (max && count > max) {
    showError("err_text_over", { over: count - max, max });
    els.text.focus();
    return;
  }
  if (state.status?.preview_enabled === false) {
    showError("err_preview_off");
    return;
  }
  const voice = selectedVoice();
  // Before any await: the click's user activation lets the audio context start.
  const context = audioContextFor(voice?.sample_rate);
  const stream = els.stream.checked && context !== null;
  const format = stream ? "pcm" : els.format.value || "wav";
  stopPlayback();

  const job = {
    id: state.nextId++,
    controller: new AbortController(),
    text,
    voice: els.voice.value || state.defaultVoice || "",
    engine: "",
    cache: "",
    format,
    stream,
    started: performance.now(),
    firstMs: null,
    totalMs: null,
    duration: null,
    requestId: "",
    timings: {},
    envelope: null,
    receiving: false,
    words: [], // word timings, in order of time (cleanWords)
    wordTimings: "", // "engine" or "estimated": where the server's timings came from
    date: new Date(),
  };
  state.job = job;
  state.current = job;
  renderButtons();
  renderResult();
  setStatus("status_sending");

  const body = { text, speed: Number(els.speed.value), format, stream, timestamps: "words" };
  if (els.voice.value) body.voice = els.voice.value;
  try {
    const response = await fetch("/api/tts", {
      method: "POST",
      cache: "no-store",
      headers: {
        "Content-Type": "application/json",
        Accept: `${NDJSON_TYPE}, ${JSON_TYPE}, audio/*`,
        ...authHeaders(),
      },
      body: JSON.stringify(body),
      signal: job.controller.signal,
    });
    noticeDegradation(response);
    if (!response.ok) {
      await showResponseError(response);
      state.current = state.history[0] || null;
      renderResult();
      return;
    }
    readHeaders(job, response);
    renderResult();
    if (job.contentType === NDJSON_TYPE) {
      await playStream(job, timedChunks(job, response.body.getReader()), context, voice);
    } else if (stream) {
      await playStream(job, bodyChunks(response.body.getReader()), context, voice);
    } else {
      await playWhole(job, response, context);
    }
    if (!state.voicesLoaded) loadVoices();
  } catch (error) {
    if (error?.name === "AbortError") {
      setStatus("status_stopped");
    } else {
      showError(job.receiving ? "err_stream_broken" : "err_network", {}, job.requestId);
    }
    if (state.current === job) state.current = state.history[0] || null;
    if (state.live && state.live === job.player) {
      state.live.stop();
      state.live = null;
    }
    renderResult();
  } finally {
    state.job = null;
    renderButtons();
    suspendAudioWhenIdle();
  }
}

/** API answers carry the ladder's level: a change refreshes the banner without waiting. */
function noticeDegradation(response) {
  const level = Number.parseInt(response.headers.get("X-Degradation-Level") ?? "", 10);
  if (Number.isInteger(level) && state.status && level !== state.status.degradation_level) {
    pollStatus();
  }
}

function readHeaders(job, response) {
  const headers = response.headers;
  job.voice = headers.get("X-Voice") || job.voice;
  job.engine = headers.get("X-Engine") || "";
  job.cache = headers.get("X-Cache") || "";
  job.requestId = headers.get("X-Request-Id") || "";
  job.timings = parseServerTiming(headers.get("Server-Timing"));
  job.sampleRate = positiveNumber(headers.get("X-Sample-Rate"));
  job.duration = positiveNumber(headers.get("X-Audio-Duration"));
  job.contentType = (headers.get("Content-Type") || "").split(";")[0].trim();
}

/** A plain streamed body: its chunks of raw PCM as they arrive. */
async function* bodyChunks(reader) {
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return;
    yield value;
  }
}

/** A streamed NDJSON body: the PCM of its audio events; words and done update the job. */
async function* timedChunks(job, reader) {
  for await (const event of ndjsonEvents(reader)) {
    if (event?.type === "audio" && typeof event.audio === "string") {
      yield base64Bytes(event.audio);
    } else if (event?.type === "words") {
      addWords(job, event.words);
    } else if (event?.type === "done") {
      job.wordTimings = String(event.timings || "");
      return;
    } else if (event?.type === "error") {
      throw new Error(String(event.error?.message || "stream error"));
    }
  }
  throw new TypeError("the stream ended before its done event");
}

function addWords(job, words) {
  const found = cleanWords(words);
  if (found.length === 0) return;
  job.words.push(...found);
  job.words.sort((a, b) => a.start_s - b.start_s || a.start_char - b.start_char);
  if (state.current === job) renderResult();
}

async function playStream(job, chunks, context, voice) {
  const sampleRate = Math.round(job.sampleRate || voice?.sample_rate || context.sampleRate);
  const player = new PcmStreamPlayer(context, sampleRate);
  job.player = player;
  job.envelope = new Envelope();
  state.live = player;
  setPlayback("playing");
  setStatus("status_streaming");
  job.receiving = true;
  for await (const value of chunks) {
    const floats = player.push(value);
    if (floats) {
      if (job.firstMs === null) {
        job.firstMs = performance.now() - job.started;
        renderMetrics();
      }
      job.envelope.add(floats);
      waveform.changed();
    }
  }
  job.receiving = false;
  player.end();
  job.envelope.finish();
  job.totalMs = performance.now() - job.started;
  job.duration = player.samples / sampleRate;
  const wav = player.wav();
  const entry = remember(job, wav, wav, "wav");
  entry.player = player; // for the waveform's progress until it has played
  showEntry(entry, false);
  setStatus("status_done", { duration: formatSeconds(job.duration), total: formatMs(job.totalMs) });
  player.done.then((finished) => {
    entry.player = null;
    player.chunks = [];
    if (state.live === player) state.live = null;
    if (finished && state.current === entry && !state.job) setPlayback("ended");
    renderButtons();
    suspendAudioWhenIdle();
  });
}

/** A JSON answer with word timings: its audio (base64) as bytes; the rest updates the job. */
async function timedAudio(job, response) {
  const body = await response.json();
  if (typeof body?.audio !== "string") throw new TypeError("no audio in the answer");
  job.contentType = String(body.content_type || MIME_TYPES[job.format] || "");
  job.sampleRate = positiveNumber(body.sample_rate) ?? job.sampleRate;
  job.duration = positiveNumber(body.duration_s) ?? job.duration;
  job.wordTimings = String(body.timings || "");
  addWords(job, body.words);
  return base64Bytes(body.audio);
}

async function playWhole(job, response, context) {
  setStatus("status_waiting");
  job.receiving = true;
  const bytes =
    job.contentType === JSON_TYPE
      ? await timedAudio(job, response)
      : new Uint8Array(await response.arrayBuffer());
  job.receiving = false;
  job.firstMs = job.totalMs = performance.now() - job.started;
  // For the waveform: decodeAudioData detaches the buffer it is given, so it gets a copy.
  const data = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  let replay;
  let download;
  if (job.format === "pcm") {
    const sampleRate = Math.round(job.sampleRate || 22050);
    download = new Blob([bytes], { type: "audio/pcm" });
    replay = wavBlob([bytes], sampleRate);
    const floats = pcmToFloats(bytes.subarray(0, bytes.byteLength - (bytes.byteLength % 2)));
    job.envelope = new Envelope();
    job.envelope.add(floats);
    job.envelope.finish();
    job.duration = job.duration ?? floats.length / sampleRate;
  } else {
    download = new Blob([bytes], { type: job.contentType || MIME_TYPES[job.format] || "" });
    replay = download;
  }
  const entry = remember(job, replay, download, job.format);
  showEntry(entry, true);
  if (!entry.envelope && context) {
    // Only for the waveform picture; a format this browser cannot decode simply has none.
    context
      .decodeAudioData(data)
      .then((buffer) => {
        entry.envelope = Envelope.fromAudioBuffer(buffer);
        entry.duration = entry.duration ?? buffer.duration;
        if (state.current === entry) renderResult();
      })
      .catch(() => {});
  }
  setStatus("status_done", { duration: formatSeconds(job.duration), total: formatMs(job.totalMs) });
}

async function showResponseError(response) {
  let code = "";
  let message = "";
  try {
    const body = await response.json();
    code = String(body?.error?.code || "");
    message = String(body?.error?.message || "");
  } catch {
    // not JSON (a proxy's page): the status line will do
  }
  if (!message) message = response.statusText || String(response.status);
  const retry = retryAfterSeconds(response.headers.get("Retry-After"));
  const requestId = response.headers.get("X-Request-Id") || "";
  const detail = [code, message, requestId].filter(Boolean).join(" · ");
  switch (response.status) {
    case 401:
      askForToken(true);
      state.errorMessage.detail = detail;
      renderMessages();
      return;
    case 403:
      showError("err_forbidden", { message }, requestId);
      return;
    case 429:
      showError(retry ? "err_rate_limited" : "err_rate_limited_soon", { s: retry }, detail);
      return;
    case 503:
      showError(retry ? "err_busy" : "err_busy_soon", { s: retry }, detail);
      return;
    case 400:
    case 413:
    case 422:
      showError("err_rejected", { message }, [code, requestId].filter(Boolean).join(" · "));
      return;
    default:
      showError("err_server", { status: response.status, message }, requestId);
  }
}

// ---- results and history ----------------------------------------------------------------------

function remember(job, replayBlob, downloadBlob, format) {
  const replayUrl = URL.createObjectURL(replayBlob);
  const downloadUrl = downloadBlob === replayBlob ? replayUrl : URL.createObjectURL(downloadBlob);
  const entry = {
    ...job,
    controller: null,
    player: null,
    replayUrl,
    downloadUrl,
    downloadFormat: format,
    fileName: fileName(job.voice, format, job.date),
    subtitlesName: fileName(job.voice, "vtt", job.date),
  };
  state.history.unshift(entry);
  while (state.history.length > HISTORY_LIMIT) forget(state.history[state.history.length - 1]);
  renderHistory();
  return entry;
}

function forget(entry) {
  state.history = state.history.filter((item) => item !== entry);
  if (state.current === entry) {
    stopPlayback();
    els.player.removeAttribute("src");
    els.player.load();
    state.current = null;
    renderResult();
  }
  URL.revokeObjectURL(entry.replayUrl);
  if (entry.downloadUrl !== entry.replayUrl) URL.revokeObjectURL(entry.downloadUrl);
  renderHistory();
}

function showEntry(entry, autoplay) {
  state.current = entry;
  renderResult();
  if (!autoplay) return;
  els.player.play().catch((error) => {
    if (error?.name === "NotSupportedError") {
      showError("err_playback", { format: formatLabel(entry.downloadFormat) });
    } else if (error?.name !== "AbortError") {
      setStatus("status_press_play");
    }
  });
}

function replay(entry) {
  stopPlayback();
  clearError();
  showEntry(entry, true);
}

function renderResult() {
  const view = state.current;
  els.resultEmpty.hidden = view !== null;
  els.resultBody.hidden = view === null;
  markCurrent();
  if (view === null) {
    els.result.dataset.playback = "idle";
    waveform.show(null);
    return;
  }
  if (view.replayUrl && els.player.getAttribute("src") !== view.replayUrl) {
    if (!els.player.paused) els.player.pause(); // (a live stream keeps playing)
    els.player.src = view.replayUrl;
  }
  renderTranscript(view);
  renderMetrics();
  const ready = Boolean(view.downloadUrl);
  els.download.hidden = !ready;
  if (ready) {
    els.download.href = view.downloadUrl;
    els.download.download = view.fileName;
    els.download.setAttribute("aria-label", t("download_label", { file: view.fileName }));
  } else {
    els.download.removeAttribute("href");
  }
  renderSubtitles(view, ready);
  els.player.hidden = !ready;
  waveform.show(view);
}

/** Subtitles once the audio is complete and has words; a note when they are estimated. */
function renderSubtitles(view, ready) {
  const words = ready && view.words?.length > 0;
  els.subtitles.disabled = !words;
  if (words) {
    els.subtitles.setAttribute("aria-label", t("subtitles_label", { file: view.subtitlesName }));
  } else {
    els.subtitles.removeAttribute("aria-label");
  }
  els.timingsNote.textContent =
    view.words?.length && view.wordTimings === "estimated" ? t("timings_estimated") : "";
}

/** The typed text as it was sent, each timed word in a span the highlight can mark. Built
 * again only when the words change (a stream adds them sentence by sentence). */
function renderTranscript(view) {
  const words = view.words || [];
  const key = `${view.id}:${words.length}`;
  if (els.resultText.dataset.key === key) return;
  els.resultText.dataset.key = key;
  const text = view.text;
  const spans = new Array(words.length).fill(null);
  const nodes = [];
  if (words.length > 0) {
    const offsets = utf16Offsets(text);
    const last = offsets.length - 1;
    const byPlace = words.map((_, i) => i);
    byPlace.sort((a, b) => words[a].start_char - words[b].start_char);
    let at = 0;
    for (const index of byPlace) {
      const start = offsets[Math.min(words[index].start_char, last)];
      const end = offsets[Math.min(words[index].end_char, last)];
      if (start < at || end <= start) continue; // overlaps the word before: left unmarked
      if (start > at) nodes.push(text.slice(at, start));
      const span = document.createElement("span");
      span.className = "word";
      span.textContent = text.slice(start, end);
      nodes.push(span);
      spans[index] = span;
      at = end;
    }
    if (at < text.length) nodes.push(text.slice(at));
  } else {
    nodes.push(text);
  }
  els.resultText.replaceChildren(...nodes);
  highlight.bind(words, spans);
}

function renderMetrics() {
  const view = state.current;
  if (!view) return;
  els.metricFirst.textContent = formatMs(view.firstMs);
  els.metricTotal.textContent = formatMs(view.totalMs);
  els.metricDuration.textContent = formatSeconds(view.duration);
  els.metricCache.textContent = view.cache || "—";
  els.metricCache.dataset.cache = view.cache || "";
  if (view.cache) els.metricCache.title = t(`cache_${view.cache}`);
  else els.metricCache.removeAttribute("title");
  els.metricEngine.textContent = view.engine || "—";
  els.metricVoice.textContent = view.voice || "—";
  const timings = view.timings || {};
  const parts = [];
  if (Number.isFinite(timings.synth)) {
    parts.push(
      t("m_server", {
        queue: formatMs(timings.queue),
        synth: formatMs(timings.synth),
        first: formatMs(timings["first-audio"]),
      }),
    );
  }
  if (view.requestId) parts.push(t("m_request", { id: view.requestId }));
  els.metricServer.textContent = parts.join(" · ");
}

function renderHistory() {
  els.historyEmpty.hidden = state.history.length > 0;
  els.historyClear.hidden = state.history.length === 0;
  const items = state.history.map((entry) => {
    const item = document.createElement("li");
    item.className = "history-item";
    item.dataset.id = String(entry.id);
    const text = document.createElement("p");
    text.className = "history-text";
    text.textContent = excerpt(entry.text);
    const meta = document.createElement("p");
    meta.className = "history-meta";
    meta.textContent = t("history_meta", {
      voice: entry.voice || "—",
      duration: formatSeconds(entry.duration),
      first: formatMs(entry.firstMs),
      cache: entry.cache || "—",
    });
    const time = document.createElement("time");
    time.dateTime = entry.date.toISOString();
    time.textContent = entry.date.toLocaleTimeString(state.lang === "zh" ? "zh-CN" : "en", {
      hour: "2-digit",
      minute: "2-digit",
    });
    meta.prepend(time, " · ");
    const actions = document.createElement("div");
    actions.className = "history-actions";
    const label = excerpt(entry.text).slice(0, 40);
    const play = document.createElement("button");
    play.type = "button";
    play.className = "small";
    play.textContent = t("replay");
    play.setAttribute("aria-label", t("replay_label", { text: label }));
    play.addEventListener("click", () => replay(entry));
    const download = document.createElement("a");
    download.className = "button small";
    download.href = entry.downloadUrl;
    download.download = entry.fileName;
    download.textContent = t("download");
    download.setAttribute("aria-label", t("download_label", { file: entry.fileName }));
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "small quiet";
    remove.textContent = t("remove");
    remove.setAttribute("aria-label", t("remove_label", { text: label }));
    remove.addEventListener("click", () => {
      const index = state.history.indexOf(entry);
      forget(entry);
      const next = els.history.querySelectorAll(".history-item button")[index * 2];
      (next || els.text).focus();
    });
    actions.append(play, download, remove);
    item.append(text, meta, actions);
    return item;
  });
  els.history.replaceChildren(...items);
  markCurrent();
}

/** Highlights the entry on display without rebuilding the list (keyboard focus stays). */
function markCurrent() {
  const id = state.current ? String(state.current.id) : "";
  for (const item of els.history.children) {
    const current = item.dataset.id === id;
    item.classList.toggle("current", current);
    if (current) item.setAttribute("aria-current", "true");
    else item.removeAttribute("aria-current");
  }
}

function clearHistory() {
  for (const entry of [...state.history]) forget(entry);
  els.text.focus();
}

// ---- waveform --------------------------------------------------------------------------------

const waveform = {
  view: null,
  frame: 0,

  show(view) {
    this.view = view;
    els.wave.classList.toggle("empty", !view);
    this.changed();
  },

  changed() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.draw());
  },

  progress() {
    const view = this.view;
    if (!view?.envelope?.samples) return 0;
    if (els.result.dataset.playback === "ended") return 1; // heard to the end
    if (state.live && view.player === state.live) {
      return state.live.playedSamples() / view.envelope.samples;
    }
    if (view.replayUrl && els.player.src === view.replayUrl && els.player.duration > 0) {
      return els.player.currentTime / els.player.duration;
    }
    return 0;
  },

  animating() {
    return (state.live && state.live.playing) || !els.player.paused;
  },

  draw() {
    this.frame = 0;
    const canvas = els.wave;
    const ratio = window.devicePixelRatio || 1;
    const width = Math.round(canvas.clientWidth * ratio);
    const height = Math.round(canvas.clientHeight * ratio);
    if (!width || !height) return;
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    const g = canvas.getContext("2d");
    g.clearRect(0, 0, width, height);
    const style = getComputedStyle(canvas);
    const played = style.getPropertyValue("--wave-played").trim() || "#0f766e";
    const rest = style.getPropertyValue("--wave-rest").trim() || "#cbd5e1";
    const envelope = this.view?.envelope;
    const bar = 2 * ratio;
    const gap = 2 * ratio;
    const bars = Math.max(1, Math.floor(width / (bar + gap)));
    const peaks = envelope ? envelope.values() : new Float32Array(0);
    const top = envelope && envelope.max > 0 ? envelope.max : 1;
    const progress = Math.min(1, Math.max(0, this.progress()));
    for (let i = 0; i < bars; i += 1) {
      let level = 0;
      if (peaks.length) {
        const from = Math.floor((i * peaks.length) / bars);
        const to = Math.max(from + 1, Math.floor(((i + 1) * peaks.length) / bars));
        for (let j = from; j < to && j < peaks.length; j += 1) level = Math.max(level, peaks[j]);
      }
      const barHeight = Math.max(ratio * 2, (level / top) * (height - 2 * ratio));
      g.fillStyle = peaks.length && i / bars < progress ? played : rest;
      g.fillRect(i * (bar + gap), (height - barHeight) / 2, bar, barHeight);
    }
    if (this.animating()) this.changed();
  },
};

// ---- the word being spoken ----------------------------------------------------------------

/** Where the audio on display is, in seconds, or null when nothing of it is playing. */
function playbackTime() {
  const view = state.current;
  const playback = els.result.dataset.playback;
  if (!view || playback === "ended" || playback === "idle") return null;
  if (state.live && view.player === state.live) {
    return state.live.playedSamples() / state.live.sampleRate;
  }
  if (view.replayUrl && els.player.src === view.replayUrl) return els.player.currentTime;
  return null;
}

/** Marks the word at the playback time (class "current") and the words already heard
 * ("spoken"), every animation frame while audio plays and on every seek or pause. */
const highlight = {
  words: [],
  spans: [],
  current: -1,
  spoken: 0,
  frame: 0,

  bind(words, spans) {
    this.words = words;
    this.spans = spans;
    this.current = -1;
    this.spoken = 0;
    this.changed();
  },

  changed() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.tick());
  },

  tick() {
    this.frame = 0;
    const time = playbackTime();
    this.show(time === null ? { current: -1, spoken: 0 } : wordPosition(this.words, time));
    if (waveform.animating()) this.changed();
  },

  show({ current, spoken }) {
    if (current !== this.current) {
      this.spans[this.current]?.classList.remove("current");
      const span = this.spans[current];
      if (span) {
        span.classList.add("current");
        keepInView(span);
      }
      this.current = current;
    }
    if (spoken !== this.spoken) {
      const from = Math.min(spoken, this.spoken);
      const to = Math.max(spoken, this.spoken);
      for (let i = from; i < to; i += 1) this.spans[i]?.classList.toggle("spoken", i < spoken);
      this.spoken = spoken;
    }
  },
};

/** Scrolls the text box (only it, never the page) to a word out of its sight. */
function keepInView(span) {
  const box = els.resultText;
  if (box.scrollHeight <= box.clientHeight) return;
  const top = span.offsetTop;
  if (top < box.scrollTop || top + span.offsetHeight > box.scrollTop + box.clientHeight) {
    box.scrollTop = Math.max(0, top - box.clientHeight / 3);
  }
}

/** A WebVTT file of the words on display, named like its audio. */
function downloadSubtitles() {
  const view = state.current;
  if (!view?.words?.length) return;
  const vtt = toVtt(captionCues(view.text, view.words, state.status ?? undefined));
  const url = URL.createObjectURL(new Blob([vtt], { type: "text/vtt;charset=utf-8" }));
  const link = document.createElement("a");
  link.href = url;
  link.download = view.subtitlesName || fileName(view.voice, "vtt", view.date);
  link.click();
  window.setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

// ---- wiring ---------------------------------------------------------------------------------

function bindEvents() {
  els.langToggle.addEventListener("click", toggleLanguage);
  els.form.addEventListener("submit", (event) => {
    event.preventDefault();
    synthesize();
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      if (!els.synth.disabled) synthesize();
    }
  });
  els.stop.addEventListener("click", () => {
    if (state.job) state.job.controller.abort();
    stopPlayback();
    setStatus("status_stopped");
    suspendAudioWhenIdle();
  });
  els.text.addEventListener("input", renderCounter);
  els.speed.addEventListener("input", () => {
    renderSpeed();
    savePrefs();
  });
  els.speedReset.addEventListener("click", () => {
    els.speed.value = "1";
    renderSpeed();
    savePrefs();
  });
  els.voice.addEventListener("change", savePrefs);
  els.format.addEventListener("change", savePrefs);
  els.stream.addEventListener("change", () => {
    renderFormatHint();
    savePrefs();
  });
  els.token.addEventListener("input", onTokenInput);
  els.authPanel.addEventListener("submit", (event) => {
    event.preventDefault();
    loadVoices();
  });
  els.tokenForget.addEventListener("click", forgetToken);
  els.historyClear.addEventListener("click", clearHistory);
  for (const name of ["play", "playing"]) {
    els.player.addEventListener(name, () => {
      if (state.live) {
        state.live.stop();
        state.live = null;
      }
      setPlayback("playing");
      waveform.changed();
    });
  }
  els.player.addEventListener("pause", () => {
    if (!els.player.ended && !state.live && !state.job) setPlayback("paused");
  });
  els.player.addEventListener("ended", () => setPlayback("ended"));
  els.player.addEventListener("seeked", () => {
    // Moved back into audio that had ended (or never started): it is paused there now.
    const playback = els.result.dataset.playback;
    const shown = state.current?.replayUrl && els.player.src === state.current.replayUrl;
    const moved = (playback === "ended" || playback === "idle") && !els.player.ended;
    if (moved && shown && !state.live && !state.job) {
      setPlayback(els.player.paused ? "paused" : "playing");
    }
    waveform.changed();
    highlight.changed();
  });
  els.player.addEventListener("timeupdate", () => highlight.changed());
  els.subtitles.addEventListener("click", downloadSubtitles);
  new ResizeObserver(() => waveform.changed()).observe(els.wave);
}

async function init() {
  state.lang = pickLanguage(storageGet(localStorage, LANG_KEY), navigator.languages);
  loadPrefs();
  const token = storageGet(sessionStorage, TOKEN_KEY);
  if (token) els.token.value = token;
  bindEvents();
  applyLanguage();
  document.body.classList.add("ready");
  await pollStatus();
  scheduleStatusPolls();
  await loadVoices();
  els.text.focus();
}

init();
