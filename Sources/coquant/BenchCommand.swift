import ArgumentParser
import CoQuantEval
import CoQuantModel
import CoQuantTensor
import Foundation

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure a model's speed and memory: prefill and decode tokens/s, bytes on disk, peak RSS.",
        discussion: """
        Prefill: one forward pass over the first 512 and 2048 tokens of the WikiText-2 test text (logits of the last
        token only, as a chat prompt). Decode: 128 greedy tokens through the KV cache after a short prompt (8 tokens)
        and after the 2048-token prompt. A quantized folder runs on the packed runtime (--simulate for the fp32
        simulator). Each figure is the median of --rounds rounds.

        With --baseline FP_MODEL both models are loaded and measured in alternation, round by round, and the ratios
        model ÷ baseline are printed: the machine state is the same for both. Peak RSS is the process's high-water
        mark while the model ran before the baseline was loaded; the baseline's is what it added on top.

        Examples:
          coquant bench out/smollm2-w4a8 --baseline models/SmolLM2-135M-Instruct.Q4_1.gguf
          coquant bench out/smollm2-w4a8 --json
        """)

    @Argument(help: "Model folder or GGUF file.")
    var model: String

    @Option(help: "Also measure this model (normally the FP original), alternating with MODEL, and print the ratios.")
    var baseline: String?

    @Option(help: "Rounds; every figure is the median over them.")
    var rounds = 3

    @Option(help: "Tokens generated in each decode measurement.")
    var decodeTokens = 128

    @Option(help: "Folder holding wikitext-2-raw-v1/ (default: ./data or the repository's data/).")
    var data: String?

    @OptionGroup var output: OutputOptions
    @OptionGroup var execution: ExecutionOptions

    struct Figures: Codable {
        var prefill512TokS: Double
        var prefill2048TokS: Double
        var decodeShortTokS: Double
        var decode2kTokS: Double
        var modelBytes: Int
        var peakRSSBytes: Int
        /// The KV cache of the 2048-token prompt and its decoded tokens (packed for KV4 schemes).
        var kvCacheBytes: Int
        enum CodingKeys: String, CodingKey {
            case prefill512TokS = "prefill_512_tok_s", prefill2048TokS = "prefill_2048_tok_s", decodeShortTokS = "decode_short_tok_s",
                 decode2kTokS = "decode_2k_tok_s", modelBytes = "model_bytes", peakRSSBytes = "peak_rss_bytes",
                 kvCacheBytes = "kv_cache_bytes"
        }
    }

    struct Result: Encodable {
        let model: String
        let figures: Figures
        let baselineModel: String?
        let baseline: Figures?
        /// model ÷ baseline for the speeds, baseline ÷ model for bytes (> 1: the model is better).
        let ratios: [String: Double]?
        let rounds: Int
        let threads: Int

        enum CodingKeys: String, CodingKey { case model, baselineModel = "baseline_model", baseline, ratios, rounds, threads }

        func encode(to encoder: Encoder) throws {
            try figures.encode(to: encoder)
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(model, forKey: .model)
            try c.encodeIfPresent(baselineModel, forKey: .baselineModel)
            try c.encodeIfPresent(baseline, forKey: .baseline)
            try c.encodeIfPresent(ratios, forKey: .ratios)
            try c.encode(rounds, forKey: .rounds)
            try c.encode(threads, forKey: .threads)
        }
    }

    func validate() throws {
        if rounds < 1 { throw ValidationError("--rounds must be at least 1") }
        if decodeTokens < 1 { throw ValidationError("--decode-tokens must be at least 1") }
    }

    /// One model's measurements, round by round.
    final class Subject {
        let path: String
        let loaded: LoadedModel
        var prefill512: [Double] = [], prefill2048: [Double] = [], decodeShort: [Double] = [], decode2k: [Double] = []
        var peakRSS = 0, kvCacheBytes = 0
        init(path: String, loaded: LoadedModel) { self.path = path; self.loaded = loaded }
    }

    func run() throws {
        let text = try readTextFile(try locateData(data, "wikitext-2-raw-v1/test.gptq_join.txt"))
        let subject = Subject(path: model, loaded: try loadModel(model, quiet: output.quiet, simulate: execution.simulate, dynamicInt8: execution.dynamicInt8))
        let ids = subject.loaded.tokenizer!.encode(String(text.prefix(40_000)))
        guard ids.count >= 2048 + 8 else { throw RunError("the benchmark text has \(ids.count) tokens, fewer than 2056") }
        let context = subject.loaded.model.config.maxPositionEmbeddings
        guard context >= 2048 + decodeTokens else {
            throw RunError("\(model): context \(context) is shorter than the 2048-token prompt + --decode-tokens \(decodeTokens)")
        }
        resetPeakRSS()
        measure(subject, ids)
        subject.peakRSS = peakRSS()
        var base: Subject?
        if let baseline {
            let before = currentRSS()
            resetPeakRSS()
            let b = Subject(path: baseline, loaded: try loadModel(baseline, quiet: output.quiet))
            measure(b, ids)
            b.peakRSS = max(0, peakRSS() - before)
            base = b
        }
        for round in 1..<rounds {
            if !output.quiet { printErr("round \(round + 1)/\(rounds)") }
            measure(subject, ids)
            if let base { measure(base, ids) }
        }
        let figures = summary(subject)
        let baseFigures = base.map(summary)
        var ratios: [String: Double]?
        if let b = baseFigures {
            ratios = ["prefill_512": figures.prefill512TokS / b.prefill512TokS, "prefill_2048": figures.prefill2048TokS / b.prefill2048TokS,
                      "decode_short": figures.decodeShortTokS / b.decodeShortTokS, "decode_2k": figures.decode2kTokS / b.decode2kTokS,
                      "model_bytes": Double(b.modelBytes) / Double(figures.modelBytes)]
        }
        let result = Result(model: model, figures: figures, baselineModel: baseline, baseline: baseFigures, ratios: ratios,
                            rounds: rounds, threads: ProcessInfo.processInfo.activeProcessorCount)
        if output.json { try printJSON(result); return }
        func row(_ name: String, _ f: Figures) -> String {
            String(format: "%-10@ %10.1f %10.1f %10.1f %10.1f %10.1f %10.1f %10.1f", name as NSString, f.prefill512TokS, f.prefill2048TokS,
                   f.decodeShortTokS, f.decode2kTokS, Double(f.modelBytes) / 1e6, Double(f.peakRSSBytes) / 1e6, Double(f.kvCacheBytes) / 1e6)
        }
        print(String(format: "%-10@ %10@ %10@ %10@ %10@ %10@ %10@ %10@", "" as NSString, "pp512" as NSString, "pp2048" as NSString,
                     "tg128" as NSString, "tg128@2k" as NSString, "MB disk" as NSString, "MB RSS" as NSString, "MB KV" as NSString))
        print(row("model", figures))
        if let b = baseFigures, let r = ratios {
            print(row("baseline", b))
            print(String(format: "%-10@ %9.2f× %9.2f× %9.2f× %9.2f× %9.2f×", "ratio" as NSString, r["prefill_512"]!, r["prefill_2048"]!,
                         r["decode_short"]!, r["decode_2k"]!, r["model_bytes"]!))
        }
        print("tok/s, median of \(rounds) rounds, \(ProcessInfo.processInfo.activeProcessorCount) threads; model: \(model)"
              + (baseline.map { "; baseline: \($0)" } ?? ""))
    }

    /// One round: prefill 512; prefill 2048 into the cache, then decode; a short prompt, then decode.
    func measure(_ s: Subject, _ ids: [Int]) {
        let m = s.loaded.model
        var t = ContinuousClock.now
        _ = m.forward(Array(ids[0..<512]), logits: .last)
        s.prefill512.append(512 / seconds(since: t))
        let cache = m.makeCache(capacity: 2048 + decodeTokens)
        t = ContinuousClock.now
        let logits = m.forward(Array(ids[0..<2048]), cache: cache, logits: .last)
        s.prefill2048.append(2048 / seconds(since: t))
        s.decode2k.append(decode(m, cache, logits))
        s.kvCacheBytes = cache.byteCount
        let short = m.makeCache(capacity: 8 + decodeTokens)
        s.decodeShort.append(decode(m, short, m.forward(Array(ids[0..<8]), cache: short, logits: .last)))
    }

    /// Greedy decode of --decode-tokens tokens after the cached prompt; tokens/s.
    func decode(_ m: LlamaModel, _ cache: KVCache, _ first: [Float]) -> Double {
        var logits = first
        let t = ContinuousClock.now
        for _ in 0..<decodeTokens {
            var best = 0
            for i in logits.indices where logits[i] > logits[best] { best = i }
            logits = m.forward([best], cache: cache, logits: .last)
        }
        return Double(decodeTokens) / seconds(since: t)
    }

    func summary(_ s: Subject) -> Figures {
        func median(_ x: [Double]) -> Double { let y = x.sorted(); return y.count % 2 == 1 ? y[y.count / 2] : (y[y.count / 2 - 1] + y[y.count / 2]) / 2 }
        return Figures(prefill512TokS: median(s.prefill512), prefill2048TokS: median(s.prefill2048), decodeShortTokS: median(s.decodeShort),
                       decode2kTokS: median(s.decode2k), modelBytes: modelBytes(s.path), peakRSSBytes: s.peakRSS,
                       kvCacheBytes: s.kvCacheBytes)
    }
}

/// Bytes of a model on disk: a GGUF file, or a folder's safetensors files.
func modelBytes(_ path: String) -> Int {
    let fm = FileManager.default
    var isDir: ObjCBool = false
    guard fm.fileExists(atPath: path, isDirectory: &isDir) else { return 0 }
    if !isDir.boolValue { return (try? fm.attributesOfItem(atPath: path)[.size] as? Int) ?? 0 }
    return ((try? fm.contentsOfDirectory(atPath: path)) ?? []).filter { $0.hasSuffix(".safetensors") }
        .reduce(0) { $0 + ((try? fm.attributesOfItem(atPath: path + "/" + $1)[.size] as? Int) ?? 0) }
}

/// `VmHWM` / `VmRSS` of /proc/self/status in bytes (0 where there is no /proc).
func procStatus(_ key: String) -> Int {
    guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
          let line = s.split(separator: "\n").first(where: { $0.hasPrefix(key + ":") }) else { return 0 }
    return (Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0) * 1024
}

func peakRSS() -> Int { procStatus("VmHWM") }
func currentRSS() -> Int { procStatus("VmRSS") }
/// Resets the high-water mark to the current RSS (Linux: writing 5 to clear_refs).
func resetPeakRSS() { try? "5".write(toFile: "/proc/self/clear_refs", atomically: false, encoding: .utf8) }
