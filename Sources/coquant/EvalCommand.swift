import ArgumentParser
import CoQuantEval
import CoQuantModel
import CoQuantTensor
import Foundation

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Zero-shot tasks as lm-evaluation-harness scores them, WikiText-2 perplexity and KL divergence vs FP.",
        discussion: """
        Tasks (lm-eval names): \(ZeroShotTask.all.map(\.name).joined(separator: ", ")), or "all".
        Each is zero-shot with lm-eval's prompts, choices and " " target delimiter; a choice's score is the summed
        log-probability of its continuation tokens (lm-eval's split of context and continuation), acc = argmax,
        acc_norm = argmax of score / characters of the choice; ± is lm-eval's standard error. Items longer than the
        model's context (--max-length) are truncated from the left as lm-eval does and counted. The average takes
        acc_norm where the task reports it, else acc (the QuaRot/FlatQuant convention).

        --ppl adds WikiText-2 perplexity (the `coquant ppl` protocol) over --windows windows of --seqlen tokens.
        --kl-vs FP_MODEL adds llama.cpp-style KL divergence against FP_MODEL (mean and percentiles of per-token KL,
        same-top-1 rate, Δ perplexity) on the first --windows windows (default 16); FP_MODEL's top-k log-probabilities
        and the rest's mass are cached (--kl-cache, default ~/.cache/coquant/) and reused by later runs.

        With --out, every scored doc is saved at once in OUT.partial/ (samples/<task>.jsonl, plus state.json with the
        settings), and --resume continues an interrupted run after its last saved doc with the same settings; its
        results equal an uninterrupted run's (timings apart: they count this run only). Perplexity and KL are not
        checkpointed: a resumed run computes them again. Without a terminal, progress is logged once a minute.

        Examples:
          coquant eval models/SmolLM2-135M-Instruct.Q4_1.gguf --tasks piqa,arc_easy --limit 100 --out runs/fp
          coquant eval out/smollm2-rtn-w4 --tasks all --ppl --windows 16 --kl-vs models/SmolLM2-135M-Instruct.Q4_1.gguf --out runs/rtn
          coquant eval out/smollm2-rtn-w4 --tasks all --ppl --windows 16 --kl-vs models/SmolLM2-135M-Instruct.Q4_1.gguf --out runs/rtn --resume
          coquant report runs/fp runs/rtn
        """)

    @Argument(help: "Model folder, GGUF file or CoQuant quantized folder.")
    var model: String

    @Option(help: "Comma-separated task names, or \"all\".")
    var tasks: String?

    @Option(help: "Evaluate only the first N docs of each task (lm-eval's --limit).")
    var limit: Int?

    @Option(help: "Zero-shot tokens per packed model pass: docs are scored together up to this many (short requests alone leave the matrix products too few rows to run fast); 1 scores each doc alone. Results differ from other batch sizes only in float rounding; --resume keeps the run's value.")
    var batchTokens = 2048

    @Flag(help: "Also WikiText-2 test perplexity (GPTQ/QuaRot protocol).")
    var ppl = false

    @Option(help: "Perplexity / KL windows (default: all of WikiText-2 test for perplexity, the first 16 for KL, whose cache grows with them).")
    var windows: Int?

    @Option(help: "Tokens per perplexity / KL window.")
    var seqlen = 2048

    @Option(name: .customLong("kl-vs"), help: "Full-precision model to compute the KL divergence against.")
    var klVs: String?

    @Option(name: .customLong("kl-top-k"), help: "Reference log-probabilities kept per token in the KL cache (the KL of top-k + rest is a lower bound; on SmolLM2 RTN-W4 top-32/128/512 keep 79/88/95 % of the full KL; the cache takes ≈ 8·k bytes per token).")
    var klTopK = 128

    @Option(name: .customLong("kl-cache"), help: "KL reference cache file (default: ~/.cache/coquant/kl-<key>.bin).")
    var klCache: String?

    @Option(help: "Longest model input for zero-shot items (lm-eval's max_length; default: max_position_embeddings).")
    var maxLength: Int?

    @Option(help: "Folder holding the task data and wikitext-2-raw-v1/ (default: ./data or the repository's data/).")
    var data: String?

    @Option(name: [.customLong("out"), .customShort("o")], help: "Write results.json, results.md and samples/<task>.jsonl into this folder.")
    var out: String?

    @Flag(help: "Replace --out if it exists; without --resume, also discard an interrupted run's OUT.partial/.")
    var overwrite = false

    @Flag(help: "Continue an interrupted run after its last finished doc (checkpoint in OUT.partial/; same settings).")
    var resume = false

    @OptionGroup var output: OutputOptions
    @OptionGroup var execution: ExecutionOptions

    func taskList() throws -> [ZeroShotTask] {
        guard let tasks else { return [] }
        if tasks == "all" { return ZeroShotTask.all }
        var seen = Set<String>()
        let names = tasks.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty && seen.insert($0).inserted }
        guard !names.isEmpty else {
            throw ValidationError("--tasks names no task (choose from \(ZeroShotTask.all.map(\.name).joined(separator: ", ")), or all)")
        }
        return try names.map {
            do { return try ZeroShotTask.named($0) } catch { throw ValidationError("\(error)") }
        }
    }

    func validate() throws {
        _ = try taskList()
        if tasks == nil && !ppl && klVs == nil { throw ValidationError("nothing to evaluate: pass --tasks, --ppl or --kl-vs") }
        if let limit, limit < 1 { throw ValidationError("--limit must be at least 1") }
        if batchTokens < 1 { throw ValidationError("--batch-tokens must be at least 1") }
        if let windows, windows < 1 { throw ValidationError("--windows must be at least 1") }
        if seqlen < 2 { throw ValidationError("--seqlen must be at least 2") }
        if klTopK < 1 { throw ValidationError("--kl-top-k must be at least 1") }
        if let maxLength, maxLength < 2 { throw ValidationError("--max-length must be at least 2") }
        if let out { try checkCreatable(out, flag: "--out") }
        if let out, FileManager.default.fileExists(atPath: out), !overwrite {
            throw ValidationError("\(out) already exists (pass --overwrite to replace it)")
        }
        if resume {
            guard let out else { throw ValidationError("--resume needs --out (an interrupted run's checkpoint is OUT.partial/)") }
            if !FileManager.default.fileExists(atPath: out + ".partial") {
                throw ValidationError("\(out).partial: no checkpoint to resume from (run without --resume first)")
            }
        } else if let out, FileManager.default.fileExists(atPath: out + ".partial"), !overwrite {
            throw ValidationError("\(out).partial already exists, left by an interrupted run (pass --resume to continue it, or --overwrite to start over)")
        }
    }

    func run() throws {
        let start = ContinuousClock.now
        // Read every input before any model runs, so a bad data file fails at once and nothing is written.
        var dataDirs: [String] = []
        let taskDocs = try taskList().map { task -> (ZeroShotTask, [Doc]) in
            let path = try locateData(data, task.files[0])
            dataDirs.append(String(path.dropLast(task.files[0].count + 1)))
            return (task, try task.docs(dataDir: dataDirs.last!, limit: limit))
        }
        let wikiText: String? = ppl || klVs != nil ? try readTextFile(try locateData(data, "wikitext-2-raw-v1/test.gptq_join.txt")) : nil
        let settings = EvalSettings(model: absolutePath(model), tasks: taskDocs.map(\.0.name), data: dataDirs.map(absolutePath),
                                    limit: limit, batchTokens: batchTokens, maxLength: maxLength, ppl: ppl, windows: windows, seqlen: seqlen,
                                    klVs: klVs.map(absolutePath), klTopK: klTopK, modelFiles: EvalSettings.fileStamp(model))
        let checkpoint = out.map { EvalCheckpointStore(output: $0) }
        // A checkpoint of other settings is refused before any model is loaded.
        var finished = Array(repeating: [DocResult](), count: taskDocs.count)
        if resume, let checkpoint {
            finished = try checkpoint.load(settings, tasks: settings.tasks)
            if !output.quiet {
                let done = zip(taskDocs, finished).map { "\($0.0.name) \($1.count)/\($0.1.count)" }
                printErr("resuming from \(checkpoint.folder)\(done.isEmpty ? "" : ": docs done " + done.joined(separator: ", "))")
            }
        }

        // The evaluated model first: a bad model path or --seqlen must fail before minutes of FP reference logits
        // are computed and cached. The price: both models are in memory while the reference is computed (once; later
        // runs read the cache).
        let loaded = try loadModel(model, quiet: output.quiet, simulate: execution.simulate, dynamicInt8: execution.dynamicInt8)
        if seqlen > loaded.model.config.maxPositionEmbeddings && wikiText != nil {
            throw RunError("--seqlen \(seqlen) is longer than the model's context (\(loaded.model.config.maxPositionEmbeddings))")
        }
        var kl: KLDivergenceResult?
        var reference: (KLReference, String)?
        if let klVs, let wikiText {
            reference = (try klReference(fpPath: klVs, text: wikiText), klVs)
        }
        let scorer = LoglikelihoodScorer(model: loaded.model, tokenizer: loaded.tokenizer!, maxLength: maxLength)
        // Started only now, so that a model or option the run cannot use leaves nothing to resume.
        if !resume { try checkpoint?.start(settings) }
        var results: [TaskResult] = []
        for ((task, docs), done) in zip(taskDocs, finished) {
            let progress = output.progress(task.name, resumedAt: done.count)
            // A finished task needs no file: evaluate scores nothing and calls no onDoc.
            let samples = try checkpoint.flatMap { done.count < docs.count ? try $0.samplesWriter(task: task.name, done: done) : nil }
            let r = try evaluate(task: task, docs: docs, scorer: scorer, done: done, rowsPerBatch: batchTokens, progress: { n, total, s in
                progress.update(n, total, seconds: s, unit: "doc", perStep: 1)
            }, onDoc: { sample in
                // One write per line (FileHandle does not buffer): a kill leaves at most this line cut short.
                try samples?.write(contentsOf: try sampleLines([sample]))
            })
            try samples?.close()
            if !output.quiet { printErr(r.summary) }
            results.append(r)
        }

        var perplexityResult: PerplexityResult?
        if let wikiText {
            let ids = loaded.tokenizer!.encode(wikiText)
            if ppl {
                let progress = output.progress("ppl window")
                perplexityResult = try perplexity(model: loaded.model, ids: ids, seqlen: seqlen, windows: windows) { done, total, s in
                    progress.update(done, total, seconds: s, unit: "tok", perStep: Double(seqlen))
                }
                if !output.quiet { printErr(perplexityResult!.summary) }
            }
            if let (ref, _) = reference {
                let progress = output.progress("KL window")
                kl = try klDivergence(model: loaded.model, reference: ref, ids: ids) { done, total, s in
                    progress.update(done, total, seconds: s, unit: "tok", perStep: Double(seqlen))
                }
                if !output.quiet { printErr(kl!.summary) }
            }
        }

        let run = EvalRun(loaded: loaded, modelPath: model, limit: limit, maxLength: scorer.maxLength, tasks: results,
                          wikitext2: perplexityResult, kl: kl, klReferenceModel: reference?.1, seconds: seconds(since: start))
        if let out {
            try writeFolderAtomically(out, overwrite: overwrite) { dir in
                try encodeJSON(run).write(to: URL(fileURLWithPath: dir + "/results.json"))
                try run.markdown.write(toFile: dir + "/results.md", atomically: false, encoding: .utf8)
                if !results.isEmpty {
                    try FileManager.default.createDirectory(atPath: dir + "/samples", withIntermediateDirectories: true)
                    for r in results {
                        try sampleLines(r.samples).write(to: URL(fileURLWithPath: dir + "/samples/\(r.task).jsonl"))
                    }
                }
            }
            // Only once OUT is complete: a run that fails before keeps its checkpoint for --resume.
            checkpoint?.remove()
            if !output.quiet { printErr("wrote \(out)/results.json, results.md\(results.isEmpty ? "" : ", samples/")") }
        }
        if output.json {
            try printJSON(run)
        } else {
            print(run.markdown, terminator: "")
        }
        if let average = run.average {
            let line = String(format: "average: %.4f over %d tasks (acc_norm where reported, else acc)", average, results.count)
            if output.json { printErr(line) } else { print(line) }
        }
    }

    /// The FP model's top-k log-probabilities on the windows, from the cache when it has them.
    func klReference(fpPath: String, text: String) throws -> KLReference {
        let attributes = try? FileManager.default.attributesOfItem(atPath: fpPath)
        let stamp = "\(URL(fileURLWithPath: fpPath).resolvingSymlinksInPath().path)|\(attributes?[.size] ?? "")|\((attributes?[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0)"
        let klWindows = windows ?? 16
        let key = "\(stamp)|\(seqlen)|\(klWindows)|\(klTopK)"
        let path = klCache ?? defaultCacheFolder() + "/kl-\(String(fnv1aString(key), radix: 16)).bin"
        if FileManager.default.fileExists(atPath: path) {
            let ref = try KLReference(contentsOf: path)
            guard ref.seqlen == seqlen, ref.windows == klWindows else {
                throw RunError("\(path) holds \(ref.windows) windows × \(ref.seqlen) tokens, not \(klWindows) × \(seqlen): pass matching --windows/--seqlen or another --kl-cache")
            }
            if !output.quiet { printErr("KL reference: \(path) (cached, \(ref.windows) windows × \(ref.seqlen), top-\(ref.topK))") }
            return ref
        }
        let fp = try loadModel(fpPath, quiet: output.quiet)
        if seqlen > fp.model.config.maxPositionEmbeddings {
            throw RunError("--seqlen \(seqlen) is longer than the context of the --kl-vs model \(fpPath) (\(fp.model.config.maxPositionEmbeddings))")
        }
        let ids = fp.tokenizer!.encode(text)
        let progress = output.progress("KL reference window")
        let ref = try KLReference.compute(model: fp.model, ids: ids, seqlen: seqlen, windows: klWindows,
                                          topK: klTopK) { done, total, s in
            progress.update(done, total, seconds: s, unit: "tok", perStep: Double(seqlen))
        }
        try ref.write(to: path, model: fpPath)
        if !output.quiet { printErr("KL reference: wrote \(path)") }
        return ref
    }
}

/// `path` made absolute (from the current folder) with symlinks resolved.
func absolutePath(_ path: String) -> String { URL(fileURLWithPath: path).resolvingSymlinksInPath().path }

func defaultCacheFolder() -> String {
    let env = ProcessInfo.processInfo.environment
    return (env["XDG_CACHE_HOME"] ?? (NSHomeDirectory() + "/.cache")) + "/coquant"
}

func fnv1aString(_ s: String) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in s.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
    return h
}

func encodeJSON<T: Encodable>(_ value: T) throws -> Data {
    let e = JSONEncoder()
    e.outputFormatting = [.prettyPrinted, .sortedKeys]
    return try e.encode(value)
}

/// results.json of an eval run: what was evaluated (model, method and bits from its quantization_config) and every
/// figure; `coquant report` reads it back.
struct EvalRun: Codable {
    let model: String
    let method: String
    let scheme: String?
    let weightBits: Int
    let activationBits: Int
    let kvBits: Int
    let limit: Int?
    let maxLength: Int
    let tasks: [TaskResult]
    let wikitext2: PerplexityResult?
    let kl: KLDivergenceResult?
    let klReferenceModel: String?
    /// Σ layer loss per decoder layer from the quantized folder's report.json, when it has one.
    let layerLoss: [Double]?
    let seconds: Double
    /// Mean over tasks of acc_norm where reported, else acc (QuaRot/FlatQuant).
    let average: Double?

    enum CodingKeys: String, CodingKey {
        case model, method, scheme, weightBits = "w_bits", activationBits = "a_bits", kvBits = "kv_bits", limit,
             maxLength = "max_length", tasks, wikitext2, kl, klReferenceModel = "kl_reference_model", layerLoss = "layer_loss",
             seconds, average
    }

    init(loaded: LoadedModel, modelPath: String, limit: Int?, maxLength: Int, tasks: [TaskResult],
         wikitext2: PerplexityResult?, kl: KLDivergenceResult?, klReferenceModel: String?, seconds: Double) {
        model = modelPath
        let q = loaded.quantizationConfig
        method = q?.method ?? "fp"
        scheme = q?.scheme
        // An unquantized model runs in fp32 here (GGUF and HF weights are dequantized on load).
        weightBits = q?.weights.bits ?? 32
        activationBits = q?.activations?.bits ?? (q == nil ? 32 : 16)
        kvBits = q?.kvCache?.bits ?? (q == nil ? 32 : 16)
        self.limit = limit
        self.maxLength = maxLength
        self.tasks = tasks
        self.wikitext2 = wikitext2
        self.kl = kl
        self.klReferenceModel = klReferenceModel
        layerLoss = readLayerLoss(modelPath + "/report.json")
        self.seconds = seconds
        average = tasks.isEmpty ? nil : tasks.map(\.headline.value).reduce(0, +) / Double(tasks.count)
    }

    var bits: String { "\(weightBits)-\(activationBits)-\(kvBits)" }

    var markdown: String {
        var md = "# CoQuant evaluation\n\n"
        md += "- model: `\(model)` (\(method)\(scheme.map { ", " + $0 } ?? ""); W-A-KV bits \(bits))\n"
        md += "- zero-shot: lm-evaluation-harness rules, \(limit.map { "first \($0) docs per task" } ?? "all docs"), max_length \(maxLength)\n"
        md += String(format: "- wall time: %.1f s\n\n", seconds)
        if !tasks.isEmpty {
            md += "| task | metric | value | ± stderr | docs | truncated | seconds |\n|---|---|---:|---:|---:|---:|---:|\n"
            for t in tasks {
                var rows = [("acc", t.acc)]
                if let n = t.accNorm { rows.append(("acc_norm", n)) }
                if let p = t.perplexity { rows.append(("perplexity", p)) }
                for (i, (name, m)) in rows.enumerated() {
                    md += String(format: "| %@ | %@ | %.4f | %@ | %@ | %@ | %@ |\n", i == 0 ? t.task : "", name, m.value,
                                 m.stderr.map { String(format: "%.4f", $0) } ?? "—",
                                 i == 0 ? "\(t.docs)" : "", i == 0 ? "\(t.truncatedRequests)" : "", i == 0 ? String(format: "%.1f", t.seconds) : "")
                }
            }
            md += String(format: "| **average** | acc_norm else acc | **%.4f** | | | | |\n\n", average!)
        }
        if let w = wikitext2 {
            md += String(format: "WikiText-2 perplexity (GPTQ protocol): %.4f ± %.4f (%d windows × %d tokens, %.1f s)\n\n",
                         w.perplexity, w.perplexityStdError, w.windows, w.seqlen, w.seconds)
        }
        if let kl {
            md += "KL divergence vs `\(klReferenceModel ?? "?")` (\(kl.windows) windows × \(kl.seqlen) tokens, top-\(kl.topK) reference):\n\n"
            md += "| statistic | value |\n|---|---:|\n"
            md += String(format: "| mean KL | %.6f ± %.6f |\n", kl.meanKL, kl.meanKLStderr)
            for p in ["max", "99.9", "99", "95", "90", "median", "10", "5", "1", "min"] {
                md += String(format: "| %@ KL | %.6f |\n", p, kl.klPercentiles[p] ?? .nan)
            }
            md += String(format: "| same top-1 | %.3f %% ± %.3f %% |\n", 100 * kl.sameTop1, 100 * kl.sameTop1Stderr)
            md += String(format: "| PPL (model / reference / Δ) | %.4f / %.4f / %+.4f |\n", kl.perplexity, kl.perplexityReference, kl.deltaPerplexity)
            md += String(format: "| mean Δp / RMS Δp | %+.4f %% / %.4f %% |\n\n", 100 * kl.meanDeltaP, 100 * kl.rmsDeltaP)
        }
        return md
    }
}

/// Σ loss per layer from a quantization report.json (`linears: [{layer, name, loss, …}]`), nil without one.
func readLayerLoss(_ path: String) -> [Double]? {
    guard let data = FileManager.default.contents(atPath: path),
          let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
          let linears = json["linears"] as? [[String: Any]], !linears.isEmpty else { return nil }
    var loss: [Double] = []
    for l in linears {
        guard let layer = l["layer"] as? Int, let value = (l["loss"] as? NSNumber)?.doubleValue, layer >= 0 else { return nil }
        if layer >= loss.count { loss += Array(repeating: 0, count: layer + 1 - loss.count) }
        loss[layer] += value
    }
    return loss
}
