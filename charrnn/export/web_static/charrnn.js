// charrnn in the browser: a character-level RNN (rnn, gru or lstm) stepping one character at a
// time, with charrnn's sampling rule and its random numbers, in plain JavaScript, no dependencies.
//
// The weights come from model.js (window.CHARRNN_MODEL, written by `charrnn export --format web`):
// the canonical torch.nn layout, float32, base64. A <script> tag works from file://, where fetch()
// of a local file does not, so the page runs opened straight from disk or from any static host.
//
// Equations (torch.nn's, as every charrnn engine computes them; gates stacked in this order):
//   rnn:  h' = tanh(W_ih x + b_ih + W_hh h + b_hh)
//   gru:  r, z = sigmoid(W_i{r,z} x + b_i{r,z} + W_h{r,z} h + b_h{r,z})
//         n = tanh(W_in x + b_in + r * (W_hn h + b_hn));  h' = (1 - z) * n + z * h
//   lstm: i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of (W_ih x + b_ih + W_hh h + b_hh)
//         c' = f * c + i * g;  h' = o * tanh(c')
//   logits = W_head h'_top + b_head
// A run trained with labels (config.labels) adds its label's row of label.weight (N, G*H) to layer 0's input
// side, W_ih x + b_ih + label.weight[label], at every step (for gru inside W_in x + b_in, outside r * (...)).
// Arithmetic is float64 on float32 weights, so logits agree with charrnn's float32 engines to ~1e-6.
//
// Sampling mirrors charrnn.infer.sampling.sample_next: logits / temperature, then top-k, then top-p, then one
// uniform number per character drawn from NumPy's default generator (PCG64 seeded through SeedSequence,
// reimplemented below), so a seed gives the text `charrnn sample --seed S` gives.
(function (root) {
  "use strict";

  // ---- the model ------------------------------------------------------------------------------

  function decodeBase64(text) {
    const binary = atob(text);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes.buffer;
  }

  function sigmoid(x) {
    return 1 / (1 + Math.exp(-x));
  }

  // out[r] = bias[r] + sum_j w[r * n + j] * x[j], for r < rows; w is (rows, n) row-major. Four running sums
  // let the CPU overlap the multiply-adds, and x is always a Float64Array so V8 compiles one loop: ~1.4x together.
  function matvec(w, rows, n, x, bias, out) {
    const n4 = n - (n % 4);
    for (let r = 0; r < rows; r++) {
      const row = r * n;
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0, j = 0;
      for (; j < n4; j += 4) {
        s0 += w[row + j] * x[j];
        s1 += w[row + j + 1] * x[j + 1];
        s2 += w[row + j + 2] * x[j + 2];
        s3 += w[row + j + 3] * x[j + 3];
      }
      for (; j < n; j++) s0 += w[row + j] * x[j];
      out[r] = bias[r] + ((s0 + s1) + (s2 + s3));
    }
    return out;
  }

  class CharRNN {
    constructor(model) {
      if (model.format !== "charrnn-web/1") throw new Error("model.js is not a charrnn web export");
      const c = model.config;
      this.config = c;
      this.cell = c.cell;
      this.L = c.layers; this.H = c.hidden; this.E = c.embed || c.vocab_size; this.V = c.vocab_size;  // embed 0: one-hot
      this.G = { rnn: 1, gru: 3, lstm: 4 }[c.cell];
      this.vocab = model.vocab;
      this.index = new Map(this.vocab.map((ch, i) => [ch, i]));
      // The run's document separator (an empty prime starts a new document) and --max-vocab's unknown symbol
      // (never drawn; characters outside the vocabulary read as it): null where the run has none, or in a
      // model.js from before they were written.
      this.separator = this.index.has(model.doc_sep) ? model.doc_sep : null;
      this.unknown = this.index.has(model.unknown) ? model.unknown : null;
      this.banned = this.unknown === null ? null : this.index.get(this.unknown);
      const buffer = typeof model.data === "string" ? decodeBase64(model.data) : model.data;
      const t = (name) => {
        const spec = model.tensors[name];
        const size = spec.shape.reduce((a, b) => a * b, 1);
        return new Float32Array(buffer, spec.offset, size);
      };
      this.embed = c.embed ? t("embed.weight") : null;                     // (V, E); none with one-hot inputs
      this.layers = [];
      for (let k = 0; k < this.L; k++) {
        this.layers.push({
          wih: t(`rnn.weight_ih_l${k}`), whh: t(`rnn.weight_hh_l${k}`),      // (G*H, in), (G*H, H)
          bih: t(`rnn.bias_ih_l${k}`), bhh: t(`rnn.bias_hh_l${k}`),          // (G*H,)
          n: k === 0 ? this.E : this.H,
        });
      }
      this.labels = c.labels || [];                                       // names, in index order; [] without labels
      this.labelW = this.labels.length ? t("label.weight") : null;        // (N, G*H)
      this.headW = t("head.weight");                                      // (V, H)
      this.headB = t("head.bias");                                        // (V,)
      const GH = this.G * this.H;
      this.xi = new Float64Array(GH);                                     // scratch: input side
      this.hh = new Float64Array(GH);                                     // scratch: recurrent side
      this.xe = new Float64Array(this.E);                                 // scratch: the embedding row (or one-hot)
    }

    // The index of a label's name (a labelled model), or null (a model without labels, given none); else throws.
    labelIndex(name) {
      const given = name !== undefined && name !== null && name !== "";
      if (!this.labels.length) {
        if (given) throw new Error("this model was trained without labels; leave the label out");
        return null;
      }
      const shown = this.labels.length > 12 ? `${this.labels.slice(0, 12).join(", ")}, ... (${this.labels.length} labels)`
                                             : this.labels.join(", ");
      if (!given) throw new Error(`this model was trained with labels ${shown}; give a label`);
      const index = this.labels.indexOf(name);
      if (index < 0) throw new Error(`${JSON.stringify(name)} is not a label of this model; it has ${shown}`);
      return index;
    }

    // A zero state; a labelled model's carries its label's index (labelIndex), which every step adds.
    initialState(label = null) {
      if ((label === null) !== (this.labelW === null)) throw new Error("a labelled model steps under a label index");
      const zeros = () => Array.from({ length: this.L }, () => new Float64Array(this.H));
      return this.cell === "lstm" ? { h: zeros(), c: zeros(), label } : { h: zeros(), label };
    }

    // Feed one character index; updates `state` in place and returns the logits (V,) for the next.
    step(state, index) {
      const H = this.H, GH = this.G * H, xi = this.xi, hh = this.hh;
      const E = this.E, xe = this.xe;
      if (this.embed) {
        for (let j = 0; j < E; j++) xe[j] = this.embed[index * E + j];  // one array type through matvec: V8 keeps it fast
      } else {
        xe.fill(0);
        xe[index] = 1;                                                    // embed 0: the one-hot vector
      }
      let x = xe;
      for (let k = 0; k < this.L; k++) {
        const p = this.layers[k], h = state.h[k];
        matvec(p.wih, GH, p.n, x, p.bih, xi);
        if (k === 0 && this.labelW) {                                     // the label's row, on the input side
          const row = state.label * GH;
          for (let j = 0; j < GH; j++) xi[j] += this.labelW[row + j];
        }
        matvec(p.whh, GH, H, h, p.bhh, hh);
        if (this.cell === "rnn") {
          for (let j = 0; j < H; j++) h[j] = Math.tanh(xi[j] + hh[j]);
        } else if (this.cell === "gru") {
          for (let j = 0; j < H; j++) {
            const r = sigmoid(xi[j] + hh[j]);
            const z = sigmoid(xi[H + j] + hh[H + j]);
            const n = Math.tanh(xi[2 * H + j] + r * hh[2 * H + j]);
            h[j] = (1 - z) * n + z * h[j];
          }
        } else {
          const c = state.c[k];
          for (let j = 0; j < H; j++) {
            const a = xi[j] + hh[j], f = xi[H + j] + hh[H + j];
            const g = xi[2 * H + j] + hh[2 * H + j], o = xi[3 * H + j] + hh[3 * H + j];
            c[j] = sigmoid(f) * c[j] + sigmoid(a) * Math.tanh(g);
            h[j] = sigmoid(o) * Math.tanh(c[j]);
          }
        }
        x = h;
      }
      return matvec(this.headW, this.V, H, x, this.headB, new Float64Array(this.V));
    }

    // Characters of `text` (whole code points) as indices; unknown ones read as the unknown symbol of a --max-vocab
    // run, else throw, or are dropped if skipUnknown.
    encode(text, skipUnknown) {
      const out = [], missing = new Set();
      for (const ch of Array.from(text)) {
        const i = this.index.has(ch) ? this.index.get(ch) : this.banned;
        if (i === null) missing.add(ch); else out.push(i);
      }
      if (missing.size && !skipUnknown) {
        const shown = Array.from(missing).sort().slice(0, 20).map((ch) => JSON.stringify(ch)).join(" ");
        throw new Error(`the prime has characters outside the model's vocabulary: ${shown}`);
      }
      return out;
    }

    // The prime's indices as charrnn feeds them: an empty prime is the separator (a new document), else a newline,
    // else the first character.
    primeIndices(prime, skipUnknown) {
      const idx = this.encode(prime, skipUnknown);
      if (idx.length) return idx;
      if (this.separator !== null) return [this.index.get(this.separator)];
      return [this.index.has("\n") ? this.index.get("\n") : 0];
    }

    // Logits after each character of the prime (T, V), from a zero state; `label`: a labelled model's label name.
    logits(prime, label) {
      const state = this.initialState(this.labelIndex(label));
      return this.encode(prime).map((i) => Array.from(this.step(state, i)));
    }
  }

  // ---- NumPy's default_rng(seed).random(): SeedSequence -> PCG64 (XSL-RR 128/64) -> doubles ----------

  const M32 = 0xffffffff;
  const MASK64 = (1n << 64n) - 1n, MASK128 = (1n << 128n) - 1n;
  const PCG_MULT = (0x2360ED051FC65DA4n << 64n) | 0x4385DF649FCCF645n;

  function seedSequencePool(seed) {
    // numpy/random/bit_generator.pyx: pool of 4 uint32 words mixed from the seed's 32-bit words
    const INIT_A = 0x43b0d7e5, MULT_A = 0x931e8875, MIX_L = 0xca01f9dd, MIX_R = 0x4973f715;
    let n = BigInt(seed);
    if (n < 0n) throw new Error("the seed must be a non-negative integer");
    const entropy = [];
    do { entropy.push(Number(n & BigInt(M32))); n >>= 32n; } while (n > 0n);
    let hashConst = INIT_A;
    const hashmix = (value) => {
      value = (value ^ hashConst) >>> 0;
      hashConst = Math.imul(hashConst, MULT_A) >>> 0;
      value = Math.imul(value, hashConst) >>> 0;
      return (value ^ (value >>> 16)) >>> 0;
    };
    const mix = (x, y) => {
      const r = (Math.imul(MIX_L, x) - Math.imul(MIX_R, y)) >>> 0;
      return (r ^ (r >>> 16)) >>> 0;
    };
    const pool = [0, 0, 0, 0];
    for (let i = 0; i < 4; i++) pool[i] = hashmix(i < entropy.length ? entropy[i] : 0);
    for (let src = 0; src < 4; src++) {
      for (let dst = 0; dst < 4; dst++) if (src !== dst) pool[dst] = mix(pool[dst], hashmix(pool[src]));
    }
    for (let src = 4; src < entropy.length; src++) {
      for (let dst = 0; dst < 4; dst++) pool[dst] = mix(pool[dst], hashmix(entropy[src]));
    }
    return pool;
  }

  function generateState64(pool, count) {
    const INIT_B = 0x8b51f9dd, MULT_B = 0x58f38ded;
    let hashConst = INIT_B;
    const words = [];
    for (let i = 0; i < 2 * count; i++) {
      let v = (pool[i % pool.length] ^ hashConst) >>> 0;
      hashConst = Math.imul(hashConst, MULT_B) >>> 0;
      v = Math.imul(v, hashConst) >>> 0;
      words.push((v ^ (v >>> 16)) >>> 0);
    }
    const out = [];
    for (let i = 0; i < count; i++) out.push(BigInt(words[2 * i]) | (BigInt(words[2 * i + 1]) << 32n));
    return out;
  }

  class PCG64 {
    constructor(seed) {
      const [s0, s1, i0, i1] = generateState64(seedSequencePool(seed), 4);
      this.inc = ((((i0 << 64n) | i1) << 1n) | 1n) & MASK128;
      this.state = 0n;
      this.advance();
      this.state = (this.state + ((s0 << 64n) | s1)) & MASK128;
      this.advance();
    }

    advance() {
      this.state = (this.state * PCG_MULT + this.inc) & MASK128;
    }

    next64() {
      this.advance();
      const s = this.state;
      const x = ((s >> 64n) ^ s) & MASK64, rot = s >> 122n;
      return ((x >> rot) | (x << ((64n - rot) & 63n))) & MASK64;
    }

    random() {  // a double in [0, 1): NumPy's next_double
      return Number(this.next64() >> 11n) / 9007199254740992;
    }
  }

  // A generator seeded like np.random.default_rng(seed); no seed: fresh entropy, as NumPy does.
  function defaultRng(seed) {
    if (seed === undefined || seed === null || seed === "") {
      const words = new Uint32Array(4);
      root.crypto.getRandomValues(words);
      seed = words.reduce((acc, w) => (acc << 32n) | BigInt(w), 0n);
    }
    return new PCG64(seed);
  }

  // ---- sampling: charrnn.infer.sampling.sample_next for one row --------------------------------------------

  function checkOptions(o) {
    if (!(o.temperature > 0)) throw new Error("temperature must be positive; for the most likely character use greedy");
    if (o.topK != null && !(Number.isInteger(o.topK) && o.topK >= 1)) throw new Error("top-k must be a whole number >= 1");
    if (o.topP != null && !(o.topP > 0 && o.topP <= 1)) throw new Error("top-p must be in (0, 1]");
  }

  function sampleNext(logits, o, rng) {
    const V = logits.length;
    if (o.greedy) {
      let best = 0;
      for (let i = 1; i < V; i++) if (logits[i] > logits[best]) best = i;
      return best;
    }
    const inv = 1.0 / o.temperature;
    const z = Float64Array.from(logits, (l) => l * inv);
    if (o.topK != null && o.topK < V) {
      const kth = Float64Array.from(z).sort()[V - o.topK];
      for (let i = 0; i < V; i++) if (z[i] < kth) z[i] = -Infinity;
    }
    let max = -Infinity;
    for (let i = 0; i < V; i++) if (z[i] > max) max = z[i];
    const p = z.map((v) => Math.exp(v - max));
    if (o.topP != null && o.topP < 1) {
      let total = 0;
      for (let i = 0; i < V; i++) total += p[i];
      for (let i = 0; i < V; i++) p[i] /= total;
      const sorted = Float64Array.from(p).sort().reverse();  // largest first
      let before = 0;
      let threshold = Infinity;
      for (const v of sorted) {
        if (before >= o.topP) break;   // the mass of the likelier ones already reaches p
        threshold = v;                 // the smallest kept probability so far
        before += v;
      }
      // every character as likely as the last one kept stays too (ties kept, as top-k keeps them)
      for (let i = 0; i < V; i++) if (p[i] < threshold) p[i] = 0;
    }
    for (let i = 1; i < V; i++) p[i] += p[i - 1];  // the cdf, unnormalized: u is scaled instead
    const u = rng.random() * p[V - 1];
    let count = 0;
    while (count < V && p[count] <= u) count++;    // the first index whose cdf exceeds u
    return Math.min(count, V - 1);
  }

  // Yields generated character indices, one at a time, after feeding the prime (charrnn.infer.sampling.generate_indices);
  // options.label: a labelled model's label name.
  function* generateIndices(model, primeIdx, length, options) {
    const o = Object.assign({ temperature: 1.0, topK: null, topP: null, greedy: false, seed: null, label: null }, options);
    checkOptions(o);
    const state = model.initialState(model.labelIndex(o.label));
    const rng = o.greedy ? null : defaultRng(o.seed);
    let last = null;
    for (const i of primeIdx) last = model.step(state, i);
    for (let n = 0; n < length; n++) {
      if (model.banned !== null) last[model.banned] = -Infinity;  // the unknown symbol is never drawn
      const next = sampleNext(last, o, rng);
      yield next;
      last = model.step(state, next);
    }
  }

  // ---- the default model and the page --------------------------------------------------------------

  let defaultModel = null;
  function getModel() {
    if (!defaultModel) defaultModel = new CharRNN(root.CHARRNN_MODEL);
    return defaultModel;
  }

  const api = {
    CharRNN, PCG64, defaultRng, sampleNext, generateIndices, getModel,
    // Logits (T, V) as plain arrays, after each character of the prime, from a zero state (under `label`, a name).
    logits: (prime, label) => getModel().logits(prime, label),
    // The prime followed by `length` generated characters, like `charrnn sample` prints them; stopAtSep ends the
    // text at the separator, like `--stop-at-sep` (a model without one ignores it).
    sample(prime, length, options) {
      const m = getModel();
      m.labelIndex(options && options.label);  // a missing or unknown label throws before anything is generated
      const skip = !!(options && options.skipUnknown), stop = !!(options && options.stopAtSep);
      const cleaned = m.encode(prime, skip).map((i) => m.vocab[i]).join("");
      let text = cleaned;
      for (const i of generateIndices(m, m.primeIndices(cleaned), length, options)) {
        if (stop && m.vocab[i] === m.separator) break;
        text += m.vocab[i];
      }
      return text;
    },
    randoms(seed, n) {  // for tests: the same numbers as np.random.default_rng(seed).random(n)
      const rng = new PCG64(seed);
      return Array.from({ length: n }, () => rng.random());
    },
  };
  root.charrnn = api;
  if (typeof module !== "undefined" && module.exports) module.exports = api;

  if (typeof document === "undefined") return;

  function setUp() {
    const $ = (id) => document.getElementById(id);
    const status = $("status"), output = $("output");
    let model;
    try {
      model = getModel();
    } catch (e) {
      status.textContent = `Could not load the model: ${e.message}`;
      return;
    }
    const c = model.config;
    if (model.separator !== null) {
      $("prime-label").textContent = "Prime (fed to the model first; empty starts a new document)";
      $("stop-at-sep").hidden = false;
    }
    if (model.labels.length) {                             // a labelled model: pick the label to write under
      $("label").replaceChildren(...model.labels.map((name) => Object.assign(document.createElement("option"),
                                                                             { value: name, textContent: name })));
      $("label-field").hidden = false;
    }
    $("about").textContent = `${c.cell.toUpperCase()}, ${c.layers} layer${c.layers > 1 ? "s" : ""} of ` +
      `${c.hidden} units, ${c.vocab_size} characters` +
      (model.labels.length ? `, ${model.labels.length} labels` : "") +
      (root.CHARRNN_MODEL.source ? ` (${root.CHARRNN_MODEL.source})` : "");
    let running = null;

    const number = (id) => {
      const v = $(id).value.trim();
      return v === "" ? null : Number(v);
    };

    async function generate() {
      const token = {};
      running = token;
      $("generate").disabled = true; $("stop").disabled = false;
      output.textContent = ""; status.textContent = "";
      try {
        const length = number("length") ?? 500;
        if (!(Number.isInteger(length) && length >= 0)) throw new Error("length must be a whole number >= 0");
        const seedText = $("seed").value.trim();
        if (seedText !== "" && !/^\d+$/.test(seedText)) throw new Error("the seed must be a whole number >= 0");
        const options = {
          temperature: number("temperature") ?? 1.0, topK: number("topk"), topP: number("topp"),
          greedy: $("greedy").checked, seed: seedText === "" ? null : BigInt(seedText),
          label: model.labels.length ? $("label").value : null,
        };
        const prime = model.encode($("prime").value, $("skip").checked).map((i) => model.vocab[i]).join("");
        const stopAtSep = model.separator !== null && $("sep").checked;
        const primeSpan = document.createElement("span");
        primeSpan.className = "prime";
        primeSpan.textContent = prime;                   // generated text is shown as text, never markup
        const generated = document.createTextNode("");
        output.append(primeSpan, generated);
        const steps = generateIndices(model, model.primeIndices(prime), length, options);
        const started = performance.now();
        let count = 0, chunk = "", shown = started;
        for (const i of steps) {
          if (stopAtSep && model.vocab[i] === model.separator) break;  // the document is whole
          chunk += model.vocab[i];
          count++;
          if (performance.now() - shown > 30) {           // about 30 times a second: show, let the page draw
            generated.appendData(chunk);
            chunk = "";
            await new Promise((resolve) => setTimeout(resolve, 0));
            shown = performance.now();
            if (running !== token) break;                  // Stop was pressed
          }
        }
        if (chunk) generated.appendData(chunk);
        const seconds = (performance.now() - started) / 1000;
        status.textContent = `${count} characters in ${seconds.toFixed(2)} s (${Math.round(count / Math.max(seconds, 1e-3))}/s)`;
      } catch (e) {
        status.textContent = e.message;
      } finally {
        if (running === token) running = null;
        $("generate").disabled = false; $("stop").disabled = true;
      }
    }

    $("generate").addEventListener("click", generate);
    $("stop").addEventListener("click", () => { running = null; });
    document.body.dataset.ready = "1";
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", setUp);
  else setUp();
})(typeof window !== "undefined" ? window : globalThis);
