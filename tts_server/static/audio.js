// Audio helpers: raw 16-bit PCM played through Web Audio as it arrives, WAV files built
// from PCM, a small level envelope for drawing the waveform, and the audio's word timings
// (the server's NDJSON events, the word at a moment, WebVTT captions).

const LEAD_S = 0.04; // first buffer (and any buffer after an underrun) starts this far ahead

export function wavHeader(sampleRate, dataBytes) {
  const header = new ArrayBuffer(44);
  const view = new DataView(header);
  const ascii = (offset, text) => {
    for (let i = 0; i < text.length; i += 1) view.setUint8(offset + i, text.charCodeAt(i));
  };
  ascii(0, "RIFF");
  view.setUint32(4, 36 + dataBytes, true);
  ascii(8, "WAVE");
  ascii(12, "fmt ");
  view.setUint32(16, 16, true); // fmt chunk size
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // mono
  view.setUint32(24, sampleRate, true);
  view.setUint32(28, sampleRate * 2, true); // byte rate
  view.setUint16(32, 2, true); // block align
  view.setUint16(34, 16, true); // bits per sample
  ascii(36, "data");
  view.setUint32(40, dataBytes, true);
  return new Uint8Array(header);
}

/** A WAV Blob from s16le mono chunks (a trailing odd byte is dropped). */
export function wavBlob(chunks, sampleRate) {
  const bytes = chunks.reduce((total, chunk) => total + chunk.byteLength, 0);
  const even = bytes - (bytes % 2);
  const blob = new Blob([wavHeader(sampleRate, even), ...chunks], { type: "audio/wav" });
  return even === bytes ? blob : blob.slice(0, 44 + even, "audio/wav");
}

/** s16le bytes (even length) -> floats in [-1, 1). */
export function pcmToFloats(bytes) {
  const count = bytes.byteLength >> 1;
  const view = new DataView(bytes.buffer, bytes.byteOffset, count * 2);
  const floats = new Float32Array(count);
  for (let i = 0; i < count; i += 1) floats[i] = view.getInt16(i * 2, true) / 32768;
  return floats;
}

/** Peak level per block of samples; grows as audio arrives. */
export class Envelope {
  constructor(block = 256) {
    this.block = block;
    this.peaks = new Float32Array(1024);
    this.length = 0;
    this.samples = 0;
    this.max = 0;
    this.partialPeak = 0;
    this.partialCount = 0;
  }

  add(floats) {
    for (let i = 0; i < floats.length; i += 1) {
      const level = Math.abs(floats[i]);
      if (level > this.partialPeak) this.partialPeak = level;
      this.partialCount += 1;
      if (this.partialCount === this.block) this.#push();
    }
    this.samples += floats.length;
  }

  finish() {
    if (this.partialCount > 0) this.#push();
  }

  values() {
    return this.peaks.subarray(0, this.length);
  }

  #push() {
    if (this.length === this.peaks.length) {
      const grown = new Float32Array(this.peaks.length * 2);
      grown.set(this.peaks);
      this.peaks = grown;
    }
    this.peaks[this.length] = this.partialPeak;
    this.length += 1;
    if (this.partialPeak > this.max) this.max = this.partialPeak;
    this.partialPeak = 0;
    this.partialCount = 0;
  }

  static fromAudioBuffer(buffer) {
    const envelope = new Envelope(Math.max(64, Math.round(buffer.sampleRate / 86)));
    envelope.add(buffer.getChannelData(0));
    envelope.finish();
    return envelope;
  }
}

/**
 * Plays raw s16le mono PCM as it arrives: each network chunk becomes an AudioBuffer
 * scheduled right after the previous one. A chunk may end in the middle of a sample;
 * that odd byte is carried over to the next chunk.
 */
export class PcmStreamPlayer {
  constructor(context, sampleRate) {
    this.context = context;
    this.sampleRate = sampleRate;
    this.chunks = [];
    this.carry = null;
    this.samples = 0;
    this.segments = []; // {when, offset, length}
    this.sources = new Set();
    this.nextTime = 0;
    this.closed = false;
    this.stopped = false;
    this.output = context.createGain();
    this.output.connect(context.destination);
    this.done = new Promise((resolve) => {
      this.resolveDone = resolve;
    });
  }

  /** Queue one network chunk; returns its samples as floats (or null if none complete). */
  push(bytes) {
    if (this.stopped || bytes.byteLength === 0) return null;
    this.chunks.push(bytes);
    let data = bytes;
    if (this.carry !== null) {
      data = new Uint8Array(bytes.byteLength + 1);
      data[0] = this.carry;
      data.set(bytes, 1);
      this.carry = null;
    }
    if (data.byteLength % 2 === 1) this.carry = data[data.byteLength - 1];
    if (data.byteLength < 2) return null;
    const floats = pcmToFloats(data);
    this.#schedule(floats);
    return floats;
  }

  /** The stream ended: `done` resolves (true) once the last buffer has played. */
  end() {
    this.closed = true;
    this.#settle();
  }

  stop() {
    if (this.stopped) return;
    this.stopped = true;
    for (const source of this.sources) {
      try {
        source.stop();
      } catch {
        // already stopped
      }
    }
    this.sources.clear();
    this.output.disconnect();
    this.resolveDone(false);
  }

  get playing() {
    return !this.stopped && (this.sources.size > 0 || !this.closed);
  }

  /** Samples already heard, from the context's clock. */
  playedSamples() {
    const now = this.context.currentTime;
    let played = 0;
    for (const segment of this.segments) {
      if (now <= segment.when) break;
      played = segment.offset + Math.min(segment.length, (now - segment.when) * this.sampleRate);
    }
    return played;
  }

  wav() {
    return wavBlob(this.chunks, this.sampleRate);
  }

  #schedule(floats) {
    const buffer = this.context.createBuffer(1, floats.length, this.sampleRate);
    buffer.copyToChannel(floats, 0);
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.output);
    const when = Math.max(this.nextTime, this.context.currentTime + LEAD_S);
    source.start(when);
    this.nextTime = when + buffer.duration;
    this.segments.push({ when, offset: this.samples, length: floats.length });
    this.samples += floats.length;
    this.sources.add(source);
    source.onended = () => {
      this.sources.delete(source);
      this.#settle();
    };
  }

  #settle() {
    if (this.closed && !this.stopped && this.sources.size === 0) this.resolveDone(true);
  }
}

// ---- word timings ---------------------------------------------------------------------------
// The server's words are {text, start_char, end_char, start_s, end_s}: offsets in Unicode
// code points of the exact text sent, times in seconds of the audio, in order of time.

/** Base64 -> bytes. */
export function base64Bytes(text) {
  if (typeof Uint8Array.fromBase64 === "function") return Uint8Array.fromBase64(text);
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i += 1) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** The objects of an application/x-ndjson body, one a line, as they arrive. */
export async function* ndjsonEvents(reader) {
  const decoder = new TextDecoder();
  let pending = "";
  for (;;) {
    const { done, value } = await reader.read();
    pending += done ? decoder.decode() : decoder.decode(value, { stream: true });
    const lines = pending.split("\n");
    pending = done ? "" : lines.pop();
    for (const line of lines) if (line.trim()) yield JSON.parse(line);
    if (done) return;
  }
}

/** For each code point index of `text` (and its end), the UTF-16 index JavaScript uses:
 * an emoji or a rare Han character is one code point but two UTF-16 units. */
export function utf16Offsets(text) {
  const offsets = [];
  let unit = 0;
  for (const ch of text) {
    offsets.push(unit);
    unit += ch.length;
  }
  offsets.push(unit);
  return offsets;
}

/** Only well-formed words: numbers where numbers belong, in order of time. */
export function cleanWords(words) {
  if (!Array.isArray(words)) return [];
  const ok = (w) =>
    w !== null &&
    typeof w === "object" &&
    Number.isInteger(w.start_char) &&
    Number.isInteger(w.end_char) &&
    w.start_char >= 0 &&
    w.end_char > w.start_char &&
    Number.isFinite(w.start_s) &&
    Number.isFinite(w.end_s);
  return words.filter(ok).map((w) => ({
    text: String(w.text ?? ""),
    start_char: w.start_char,
    end_char: w.end_char,
    start_s: w.start_s,
    end_s: Math.max(w.start_s, w.end_s),
  }));
}

/**
 * Where `time` falls among words sorted by start: `current` is the index of the word whose
 * [start_s, end_s) holds it (-1 in a pause between words), `spoken` how many words lie
 * wholly before it.
 */
export function wordPosition(words, time) {
  let low = 0;
  let high = words.length;
  while (low < high) {
    const middle = (low + high) >> 1;
    if (words[middle].start_s <= time) low = middle + 1;
    else high = middle;
  }
  // words[0, low) have started by `time`
  const last = low - 1;
  if (last >= 0 && time < words[last].end_s) return { current: last, spoken: last };
  return { current: -1, spoken: low };
}

// Cues as the server's own captions make them (tts_server/speech/timings.py): a cue ends at
// a sentence end; a run that would pass the server's text.caption_max_chars or
// caption_max_s (from /ui/status; these defaults are config.toml's) is cut after its last
// clause mark (a comma), if it has one, else where it is.
const CUE_LIMITS = { caption_max_chars: 84, caption_max_s: 6.0 };
const CUE_END = /[.!?…。！？；;][^\p{L}\p{N}_]*$/u;
const CLAUSE_END = /[,:，、：—][^\p{L}\p{N}_]*$/u;
const PUNCTUATION = /^\p{P}$/u;

/** Caption cues {start_s, end_s, text}: runs of words in the typed text's own words,
 * punctuation included, lines folded. */
export function captionCues(text, words, limits = CUE_LIMITS) {
  const chars = Array.from(text);
  const textEnd = (end) => {
    let at = end;
    while (at < chars.length && PUNCTUATION.test(chars[at])) at += 1;
    return at;
  };
  // The word with the punctuation right after it ("world!", "好。").
  const trailing = (word) => chars.slice(word.start_char, textEnd(word.end_char)).join("");
  const cues = [];
  const emit = (run) => {
    const first = run[0];
    const last = run[run.length - 1];
    const cueText = chars.slice(first.start_char, textEnd(last.end_char)).join("");
    cues.push({
      start_s: first.start_s,
      end_s: Math.max(last.end_s, first.start_s),
      text: cueText.split(/\s+/).filter(Boolean).join(" "),
    });
  };
  // How many words of the run go into a cut cue: through the last one before a clause mark.
  const lastClauseEnd = (run) => {
    for (let index = run.length - 1; index > 0; index -= 1) {
      if (CLAUSE_END.test(trailing(run[index - 1]))) return index;
    }
    return run.length;
  };
  let group = [];
  for (const word of words) {
    const full =
      group.length > 0 &&
      (word.end_char - group[0].start_char > limits.caption_max_chars ||
        word.end_s - group[0].start_s > limits.caption_max_s);
    if (full) {
      const cut = lastClauseEnd(group);
      emit(group.slice(0, cut));
      group = group.slice(cut);
    }
    group.push(word);
    if (CUE_END.test(trailing(word))) {
      emit(group);
      group = [];
    }
  }
  if (group.length > 0) emit(group);
  return cues;
}

function vttClock(seconds) {
  const millis = Math.round(seconds * 1000);
  const pad = (n, width = 2) => String(n).padStart(width, "0");
  const hours = Math.floor(millis / 3_600_000);
  const minutes = Math.floor(millis / 60_000) % 60;
  const secs = Math.floor(millis / 1000) % 60;
  return `${pad(hours)}:${pad(minutes)}:${pad(secs)}.${pad(millis % 1000, 3)}`;
}

/** A WebVTT file; cue text has & and < escaped (they start entities and tags), no "-->". */
export function toVtt(cues) {
  const body = cues.map((cue) => {
    const text = cue.text.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll("-->", "->");
    return `${vttClock(cue.start_s)} --> ${vttClock(cue.end_s)}\n${text}\n`;
  });
  return `WEBVTT\n\n${body.join("\n")}`;
}
