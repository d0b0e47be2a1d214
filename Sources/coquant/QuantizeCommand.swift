import ArgumentParser
import CoQuantExport
import CoQuantEval
import CoQuantModel
import CoQuantQuant
import CoQuantTensor
import Foundation

struct Quantize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Quantize a model layer by layer and write a self-contained quantized folder.",
        discussion: """
        Calibration follows the reference code: the WikiText-2 train prefix (non-empty lines joined with "\\n\\n")
        tokenized once without BOS, --nsamples windows of --seqlen tokens at offsets from CPython's random.seed(--seed)
        and randint. Each decoder layer's linears are solved in the order q/k/v → o → gate/up → down, every group's
        Hessian computed with the groups before it already quantized, and the quantized layer feeds the next.

        Schemes: W4A16, W3A16 (per output channel), W4A16g128 (groups of 128 input columns), W8A8, W4A8, W4A4KV4.
        Activations are fake-quantized per token (asymmetric) at the input of every decoder linear, the KV cache per
        (token, head); the LM head stays full precision, as in QuaRot/ResQ/CoQuant.

        ResQ and CoQuant (--method resq|coquant) first run the calibration windows through the norm-fused model to
        collect second moments, then keep the top --high-fraction of every block input's channels (chosen by PCA of
        the activations for ResQ, of activations and weights together for CoQuant) at --high-bits and the rest at
        the scheme's bits, with bases fused into the weights and, per layer, two online basis changes.

        Examples:
          coquant quantize models/SmolLM2-135M-Instruct.Q4_1.gguf --method gptq --scheme W4A16 --out out/smollm2-gptq-w4
          coquant ppl out/smollm2-gptq-w4
          coquant quantize models/SmolLM2-135M-Instruct.Q4_1.gguf --method coquant --scheme W4A4KV4 --w-clip --out out/smollm2-coquant
        """)

    @Argument(help: "Model folder or GGUF file.")
    var model: String

    @Option(help: "rtn | gptq | cdquant | quarot | resq | coquant")
    var method: String

    @Option(help: "W4A16 | W3A16 | W4A16g128 | W8A8 | W4A8 | W4A4KV4 …, or a llama.cpp file type solved on its exact block grids: Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q2_K | Q3_K_S | Q3_K_M | Q3_K_L | Q4_K_S | Q4_K_M | Q5_K_S | Q5_K_M | Q6_K (each linear at the type llama-quantize gives it).")
    var scheme = "W4A16"

    @Option(help: "Weight solver: rtn | gptq | cdquant (default: the method's own; quarot uses gptq).")
    var solver: String?

    @Option(name: [.customLong("out"), .customShort("o")], help: "Output folder.")
    var out: String

    @Option(help: "Also export the result for another tool, as `coquant export` would: gguf writes OUT.gguf, mlx | hf | compressed-tensors write OUT-<format>/. What the format cannot carry is refused before quantizing.")
    var format: ExportFormat?

    @Option(name: [.customLong("w-bits"), .customLong("w_bits")], help: "Override the scheme's weight bits.")
    var wBits: Int?
    @Option(name: [.customLong("a-bits"), .customLong("a_bits")], help: "Override the scheme's activation bits (16 = none).")
    var aBits: Int?
    @Option(name: [.customLong("kv-bits"), .customLong("kv_bits")], help: "Override the scheme's KV-cache bits (16 = none).")
    var kvBits: Int?
    // .unconditional: "--w-groupsize -1" would otherwise read -1 as a flag.
    @Option(name: [.customLong("w-groupsize"), .customLong("w_groupsize")], parsing: .unconditional, help: "Weight group size (-1: per channel).")
    var wGroupsize: Int?
    @Flag(name: [.customLong("w-asym"), .customLong("w_asym")], help: "Asymmetric weight grid. Default symmetric, as QuaRot, ResQ and CoQuant run (IST-DASLab/gptq's llama.py defaults to asymmetric: pass this to match its runs without --sym).")
    var wAsym = false
    @Option(name: .customLong("weight-grid"), help: "The symmetric weight grid: gptq (IST-DASLab quant.py: s = 2·max|w|/(2^b − 1), unsigned codes) or quarot (QuaRot/CoQuant WeightQuantizer: s = max|w|/(2^(b−1) − 1), signed codes), or a GGUF block type's exact grid (Q4_0, Q8_0, Q4_K, Q6_K, … with the scheme's bits and its block's group size, e.g. --scheme W6A16g16 --weight-grid Q6_K). Default: quarot for quarot/resq/coquant and schemes with quantized activations or KV cache, gptq otherwise.")
    var weightGrid: String?
    @Flag(inversion: .prefixedNo, help: "quarot: the online Hadamards (down_proj input, across heads, queries/keys). --no-online-rotations keeps only the rotations that fuse into the weights (R1, the value heads), for weight-only models that GGUF, MLX and compressed-tensors can carry.")
    var onlineRotations = true
    @Flag(name: [.customLong("w-clip"), .customLong("w_clip")], help: "MSE search for the weight clipping range (grid 100, shrink 0.8, norm 2.4).")
    var wClip = false
    @Option(name: [.customLong("a-clip-ratio"), .customLong("a_clip_ratio")], help: "Activation range clip ratio.")
    var aClipRatio = 1.0
    @Option(name: [.customLong("kv-clip-ratio"), .customLong("kv_clip_ratio")], help: "KV-cache range clip ratio.")
    var kvClipRatio = 1.0
    @Option(name: [.customLong("down-proj-a-bits")], help: "Activation bits at the down_proj input when they should differ from the scheme's (16: not quantized).")
    var downProjABits: Int?

    @Flag(name: [.customLong("int8-down-proj"), .customLong("int8_down_proj")], help: "QuaRot's --int8_down_proj: the down_proj input at 8 bits (same as --down-proj-a-bits 8).")
    var int8DownProj = false

    @Option(help: "Calibration windows.")
    var nsamples = 128
    @Option(help: "Tokens per calibration window.")
    var seqlen = 2048
    @Option(help: "GPTQ damping, relative to the mean diagonal of H.")
    var percdamp = 0.01
    @Flag(name: [.customLong("act-order"), .customLong("act_order")], help: "GPTQ: process columns by descending H diagonal.")
    var actOrder = false
    @Flag(name: [.customLong("static-groups"), .customLong("static_groups")], help: "GPTQ/CDQuant with groups: each group's scale from the original weights, before any error feedback (with --act-order: the only way groups stay expressible in GGUF and compressed-tensors).")
    var staticGroups = false
    @Option(help: "Weight of each calibration window's first token in the layer Hessians (1: the reference). That token is an attention sink every later token reads: with small groups (g32, Q4_0) GPTQ loses to rounding unless it counts more — 64 recovers it on SmolLM2 (RESULTS.md).")
    var sinkWeight: Double?
    @Flag(inversion: .prefixedNo, help: "quarot: mean-centre the embedding rows when fusing norms, as QuaRot/ResQ/CoQuant do (not function-preserving for RMSNorm models; --no-center-embeddings keeps the function exactly).")
    var centerEmbeddings = true
    @Option(help: ArgumentHelp("Storage of the embedding table and the LM head: int8 (one scale per row, as llama.cpp's Q8_0), int4 (asymmetric, groups of 32 columns, as Q4_1), f16 or f32; the in-memory model is rounded the same way.",
                               discussion: "The papers' protocol keeps both at full precision: the research tables use --embeddings f32."))
    var embeddings = "int8"
    @Option(help: "Seed of the calibration sampler (and random rotations).")
    var seed: UInt32 = 0
    @Option(help: "Calibration text file (default: the repository's WikiText-2 train prefix).")
    var calibFile: String?
    @Option(help: "Folder holding wikitext-2-raw-v1/ (default: ./data or the repository's data/).")
    var data: String?
    @Option(help: "resq/coquant: per-layer (a basis per layer, online basis changes; the CoQuant reference) or shared (one basis; ResQ's official setting). Default per-layer.")
    var granularity: String?

    @Option(help: "resq/coquant: post-RoPE key bases per-head (each KV head its own) or pooled (one per layer over its KV heads). Default: per-head with per-layer, pooled with shared (the references' choices); per-head is much better where the heads' keys differ, e.g. Qwen2's biased keys.")
    var keyBasis: String?

    @Option(name: [.customLong("high-fraction"), .customLong("high_fraction")], help: "resq/coquant: share of channels kept at --high-bits (default 0.125).")
    var highFraction: Double?

    @Option(name: [.customLong("high-bits"), .customLong("high_bits")], help: "resq/coquant: bits of the high-precision subspace (default 8).")
    var highBits: Int?

    @Option(help: "resq/coquant per-layer: bits of the online basis changes' inputs, the residual stream per token (default 8, as the reference; 16 leaves them unquantized).")
    var residualBits: Int?

    @Flag(name: [.customLong("kv-weight-aware"), .customLong("use_kv_wa_cov")], help: "resq/coquant: weight-aware value/key bases (the reference's use_kv_wa_cov; off there by default).")
    var kvWeightAware = false

    @Flag(name: [.customLong("pre-fuse-lambda-compensation"), .customLong("use_pre_fuse_lambda_compensation")], help: "coquant per-layer: form the objective before norm fusion and map the basis back by QR (the reference's use_pre_fuse_lambda_compensation; off there by default).")
    var preFuseLambdaCompensation = false

    @Option(help: "resq/coquant: bases file (float64 safetensors). Read if it exists, skipping the statistics pass; written otherwise, so a second run with another solver reuses the bases and rotations.")
    var bases: String?
    @Option(help: "resq/coquant: second-moment statistics file (float64 safetensors). Read if it exists and was collected from this model and these calibration windows, skipping the statistics pass; written otherwise. ResQ and CoQuant, per-layer and shared runs on the same windows can share one.")
    var statistics: String?

    @Flag(help: "Replace --out if it exists.")
    var overwrite = false
    @Flag(help: "Continue an interrupted run from its last finished layer (checkpoints in OUT.partial/; same options).")
    var resume = false
    @OptionGroup var output: OutputOptions

    func options() throws -> QuantizeOptions {
        guard let m = Method(rawValue: method.lowercased()) else {
            throw ValidationError("unknown --method \(method) (choose from \(Method.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        var s: QuantScheme
        do { s = try QuantScheme(parsing: scheme) } catch { throw ValidationError("\(error)") }
        if s.ggml != nil && (wBits != nil || wGroupsize != nil) {
            throw ValidationError("--scheme \(s.name) fixes each linear's bits and blocks: drop --w-bits / --w-groupsize")
        }
        if let wBits { s.weightBits = wBits }
        if let aBits { s.activationBits = aBits }
        if let kvBits { s.kvBits = kvBits }
        if let wGroupsize {
            guard wGroupsize > 0 || wGroupsize == -1 else { throw ValidationError("--w-groupsize \(wGroupsize) must be positive, or -1 for per channel") }
            s.weightGroupSize = wGroupsize > 0 ? wGroupsize : nil
        }
        for (flag, b) in [("weight", s.weightBits), ("activation", s.activationBits), ("KV", s.kvBits)]
            where !((2...8).contains(b) || (b == 16 && flag != "weight")) {
            throw ValidationError("unsupported \(flag) bit width \(b) (2–8\(flag == "weight" ? "" : ", or 16 for none"))")
        }
        var solverKind: SolverKind?
        if let solver {
            guard let k = SolverKind(rawValue: solver.lowercased()) else {
                throw ValidationError("unknown --solver \(solver) (choose from rtn, gptq, cdquant)")
            }
            solverKind = k
        }
        var o = QuantizeOptions(method: m, scheme: s, solver: solverKind)
        o.weightSymmetric = !wAsym
        o.weightClip = wClip
        o.weightGridName = weightGrid
        if !onlineRotations {
            guard m == .quarot else { throw ValidationError("--no-online-rotations is a quarot option (--method \(m.rawValue) has no online rotations to drop)") }
            o.onlineRotations = false
        }
        o.activationClipRatio = aClipRatio
        o.kvClipRatio = kvClipRatio
        o.nsamples = nsamples
        o.seqlen = seqlen
        o.seed = seed
        o.percdamp = percdamp
        o.actOrder = actOrder
        o.staticGroups = staticGroups ? true : nil
        o.sinkWeight = sinkWeight
        o.centerEmbeddings = centerEmbeddings
        switch embeddings.lowercased() {
        case "int8", "int8-row": o.embeddings = .int8
        case "int4", "int4-g32": o.embeddings = .int4
        case "f16", "fp16": o.embeddings = .f16
        case "f32", "fp32": o.embeddings = .f32
        default: throw ValidationError("unknown --embeddings \(embeddings) (choose from int8, int4, f16, f32)")
        }
        if int8DownProj { o.downProjActivationBits = 8 }
        if let b = downProjABits {
            guard (2...8).contains(b) || b == 16 else { throw ValidationError("--down-proj-a-bits \(b) must be 2–8 or 16") }
            o.downProjActivationBits = b
        }
        // The subspace options mean nothing to the other methods: refuse them rather than ignore them silently, so
        // a run named "quarot, high fraction 0.25" cannot be a plain QuaRot run under another name.
        let subspaceOnly: [(String, Bool)] = [("--granularity", granularity != nil), ("--key-basis", keyBasis != nil), ("--high-fraction", highFraction != nil),
                                              ("--high-bits", highBits != nil), ("--residual-bits", residualBits != nil), ("--kv-weight-aware", kvWeightAware),
                                              ("--pre-fuse-lambda-compensation", preFuseLambdaCompensation),
                                              ("--bases", bases != nil), ("--statistics", statistics != nil)]
        if !m.usesSubspace, let (flag, _) = subspaceOnly.first(where: { $0.1 }) {
            throw ValidationError("\(flag) applies only to --method resq or coquant (not \(m.rawValue))")
        }
        if m.usesSubspace {
            var sub = SubspaceOptions()      // the reference scripts' defaults; the flags given replace them
            if let granularity {
                guard let g = BasisGranularity(rawValue: granularity) else {
                    throw ValidationError("unknown --granularity \(granularity) (choose from per-layer, shared)")
                }
                sub.granularity = g
            }
            if let keyBasis {
                guard let k = KeyBasis(rawValue: keyBasis) else {
                    throw ValidationError("unknown --key-basis \(keyBasis) (choose from per-head, pooled)")
                }
                sub.keyBasis = k
            }
            if let highFraction {
                guard highFraction > 0 && highFraction < 1 else { throw ValidationError("--high-fraction \(highFraction) must be in (0, 1)") }
                sub.highFraction = highFraction
            }
            if let highBits {
                guard (2...8).contains(highBits) else { throw ValidationError("--high-bits \(highBits) must be 2–8") }
                sub.highBits = highBits
            }
            if let residualBits {
                guard (2...8).contains(residualBits) || residualBits == 16 else {
                    throw ValidationError("--residual-bits \(residualBits) must be 2–8, or 16 for none")
                }
                guard sub.granularity == .perLayer else {
                    throw ValidationError("--residual-bits needs --granularity per-layer (the shared basis has no basis changes)")
                }
                guard s.activationBits < 16 || s.kvBits < 16 else {
                    throw ValidationError("--residual-bits needs quantized activations or KV cache (scheme \(s.name) keeps them in full precision, and the residual with them)")
                }
                sub.residualBits = residualBits
            }
            sub.kvWeightAware = kvWeightAware
            if preFuseLambdaCompensation {
                guard m == .coquant, sub.granularity == .perLayer else {
                    throw ValidationError("--pre-fuse-lambda-compensation needs --method coquant --granularity per-layer (the reference applies it to wa_cov per-layer bases only)")
                }
                sub.preFuseLambdaCompensation = true
            }
            sub.basesFile = bases
            sub.statisticsFile = statistics
            o.subspace = sub
        }
        do { try o.check() } catch { throw ValidationError("\(error)") }
        return o
    }

    /// Every check that needs only the command line, so a mistyped option fails before a model is loaded.
    /// Where --format writes its export.
    var exportPath: String? { format.map { $0 == .gguf ? out + ".gguf" : out + "-" + $0.rawValue } }

    func validate() throws {
        let o = try options()
        try checkCreatable(out, flag: "--out")
        if let format, let path = exportPath {
            // The exporters refuse these from the folder's config; here they are known before hours of solving.
            let s = o.scheme, name = format.rawValue.uppercased()
            if s.activationBits < 16 || s.kvBits < 16 {
                throw ValidationError("--format \(format.rawValue): \(name) holds weights only; \(s.name) quantizes activations or the KV cache")
            }
            if [.quarot, .resq, .coquant].contains(o.method) && !(o.method == .quarot && o.onlineRotations == false) {
                throw ValidationError("--format \(format.rawValue): \(o.method.rawValue)'s online rotations cannot be carried by \(name)\(o.method == .quarot ? " (add --no-online-rotations to keep only the fused ones)" : "")")
            }
            if o.actOrder && s.weightGroupSize != nil && o.staticGroups != true {
                throw ValidationError("--format \(format.rawValue): act-order with dynamic groups cannot be expressed in \(name)'s consecutive groups (add --static-groups)")
            }
            if s.ggml != nil && format != .gguf && format != .hf {
                throw ValidationError("--format \(format.rawValue): --scheme \(s.name) solves on GGUF block grids; export it as gguf (or hf)")
            }
            let bits = format == .gguf ? [4, 5, 8] : format == .mlx ? [2, 4, 8] : format == .compressedTensors ? [4, 8] : Array(2...8)
            if s.ggml == nil && !bits.contains(s.weightBits) {
                throw ValidationError("--format \(format.rawValue): \(s.weightBits)-bit weights have no \(name) type here (\(bits.map(String.init).joined(separator: ", ")) bits do)")
            }
            if FileManager.default.fileExists(atPath: path) && !overwrite {
                throw ValidationError("\(path) already exists (pass --overwrite to replace it)")
            }
        }
        if FileManager.default.fileExists(atPath: out) && !overwrite {
            throw ValidationError("\(out) already exists (pass --overwrite to replace it)")
        }
        // An interrupted run's layers can be hours of work: never drop them without being told to.
        if FileManager.default.fileExists(atPath: out + ".partial") && !resume && !overwrite {
            throw ValidationError("\(out).partial already exists, left by an interrupted run (pass --resume to continue it, or --overwrite to start over)")
        }
    }

    func run() throws {
        let opts = try options()
        let loaded = try loadModel(model, quiet: output.quiet)
        let m = loaded.model, c = m.config
        if opts.seqlen > c.maxPositionEmbeddings {
            throw RunError("--seqlen \(opts.seqlen) is longer than the model's context (\(c.maxPositionEmbeddings))")
        }
        // quantizeModel checks this too, but only after OUT.partial/ exists; here nothing has been written yet.
        do { try opts.check(for: c) } catch {
            throw RunError("--scheme \(opts.scheme.name)\(wGroupsize == nil ? "" : " (--w-groupsize)"): \(error)")
        }
        let calibPath = try calibFile ?? locateData(data, "wikitext-2-raw-v1/train.first1MB_nonempty_rows.txt")
        let text = try readTextFile(calibPath)
        // The reference joins the non-empty train rows with "\n\n" and tokenizes once, without BOS.
        let joined = text.split(separator: "\n", omittingEmptySubsequences: true).joined(separator: "\n\n")
        let ids = loaded.tokenizer!.encode(joined, addSpecialTokens: false)
        let windows: [[Int]]
        do { windows = try calibrationWindows(ids: ids, nsamples: opts.nsamples, seqlen: opts.seqlen, seed: opts.seed) } catch {
            throw RunError("\(calibPath): \(error)")
        }
        if !output.quiet {
            printErr("calibration: \(calibPath), \(ids.count) tokens, \(opts.nsamples) windows × \(opts.seqlen) (seed \(opts.seed)); method \(opts.method.rawValue), solver \(opts.solver.rawValue), \(opts.scheme.name)")
        }
        // The reference draws its windows from the whole train split (≈ 2.4M tokens); a shorter text still works, but
        // its windows overlap more, so say so.
        let calibrationWarnings = ids.count >= opts.nsamples * opts.seqlen ? [] :
            ["\(calibPath): \(ids.count) tokens, fewer than the \(opts.nsamples) × \(opts.seqlen) requested, so the calibration windows must overlap"]
        for w in calibrationWarnings where !output.quiet { printErr("warning: " + w) }
        if let sub = opts.subspace {
            _ = try highChannels(fraction: sub.highFraction, config: c)      // zero high channels: refuse before any work
            // Only a statistics pass needs the tokens; bases read from --bases do not.
            if !(sub.basesFile.map { FileManager.default.fileExists(atPath: $0) } ?? false), opts.nsamples * opts.seqlen < c.hiddenSize {
                throw RunError("--nsamples \(opts.nsamples) × --seqlen \(opts.seqlen) = \(opts.nsamples * opts.seqlen) calibration tokens, fewer than the hidden size \(c.hiddenSize): the second moments would be rank-deficient")
            }
        }
        let statsProgress = output.progress("statistics window")
        let start = ContinuousClock.now
        let store = LayerCheckpointStore(output: out, options: opts)
        var finished: [FinishedLayer] = []
        if resume {
            finished = try store.load()
            if !output.quiet { printErr("resuming after \(finished.count) finished layer(s) from \(store.folder)") }
        } else {
            try store.start()
        }
        // Not logged without a terminal: every layer prints its own line. The rate and ETA count this run's layers only.
        let progress = Progress(enabled: output.showProgress, label: "layer", resumedAt: finished.count)
        var savedLayers = 0
        // A run that fails before its first layer is saved (an unreadable --bases or --statistics file, a singular
        // statistic) leaves nothing worth resuming: remove OUT.partial/ so nothing half-written stays behind.
        let result: QuantizationResult
        do {
            result = try quantizeModel(m, calibration: windows, options: opts, resume: finished, onLayer: { l, done in
                try store.save(layer: l, done)
                savedLayers += 1
                let reports = done.reports
                let secs = seconds(since: start)
                progress.update(l + 1, c.numHiddenLayers, seconds: secs, unit: "layer", perStep: 1)
                if !output.quiet && !output.showProgress {
                    // One line per layer naming each linear's loss and solve time, so a slow or exploding linear shows at once.
                    let each = reports.map { r in
                        String(format: "%@ %.3g (%.1fs)", String(r.name.split(separator: ".").last ?? ""), r.loss, r.seconds)
                    }.joined(separator: ", ")
                    printErr(String(format: "layer %d/%d: Σ loss %.4g, %.1f s — %@", l + 1, c.numHiddenLayers,
                                    reports.map(\.loss).reduce(0, +), reports.map(\.seconds).reduce(0, +), each))
                }
            }, onStatistics: { i in
                statsProgress.update(i, windows.count, seconds: seconds(since: start), unit: "window", perStep: 1)
            })
        } catch {
            if !resume && savedLayers == 0 { store.remove() }
            throw error
        }
        if !output.quiet, let bases = result.bases {
            printErr(String(format: "%@ bases (%@, %@ keys): r = %d of %d channels, %d of %d per head; statistics %.1f s, eigendecompositions %.1f s",
                            opts.method.rawValue, bases.granularity.rawValue, bases.keyBasis.rawValue, bases.high, c.hiddenSize, bases.headHigh, c.headDim,
                            result.statisticsSeconds, result.basesSeconds))
            let checks = result.errorChecks
            if checks.count > 1 {
                printErr(String(format: "output-error model vs measured (RTN weights, %d block inputs): mean predicted %.4g, measured %.4g, rank correlation %.3f",
                                checks.count, checks.map(\.predicted).reduce(0, +) / Double(checks.count),
                                checks.map(\.measured).reduce(0, +) / Double(checks.count),
                                rankCorrelation(checks.map(\.predicted), checks.map(\.measured))))
            }
        }
        for w in result.warnings where !output.quiet { printErr("warning: " + w) }
        try installFakeQuantization(m, scheme: opts.scheme, options: opts, subspace: result.subspace)
        let bytes = try writeQuantizedFolder(out, loaded: loaded, result: result, options: opts)
        let report = QuantizeReport(model: model, options: opts, seconds: seconds(since: start),
                                    calibrationTokens: ids.count, linears: result.reports, outputBytes: bytes,
                                    warnings: calibrationWarnings + result.warnings,
                                    subspace: result.bases.map { b in
                                        SubspaceReport(high: b.high, headHigh: b.headHigh, statisticsSeconds: result.statisticsSeconds,
                                                       basesSeconds: result.basesSeconds, attentionEnergy: b.attentionEnergy,
                                                       mlpEnergy: b.mlpEnergy,
                                                       errorModel: result.errorChecks.isEmpty ? nil : result.errorChecks)
                                    },
                                    resumedAfterLayers: finished.isEmpty ? nil : finished.count)
        try report.write(to: out)
        store.remove()
        if output.json { try printJSON(report) }
        let total = result.reports.map(\.loss).reduce(0, +)
        let line = String(format: "quantized: %d linears, %@, Σ layer loss %.6g, %.1f s; wrote %@ (%.1f MB)",
                          result.reports.count, opts.scheme.name, total, report.seconds, out, Double(bytes) / 1e6)
        if output.json { printErr(line) } else { print(line) }
        if let format, let path = exportPath {
            let bytes: Int, what: String
            switch format {
            case .gguf:
                let r = try GGUFExport.write(folder: out, to: path, overwrite: overwrite)
                (bytes, what) = (r.bytes, r.typeSummary + (r.roundedParameters > 0 ? "; \(r.roundedParameters) of \(r.parameters) scales rounded to fp16" : ""))
            case .mlx:
                let r = try MLXExport.write(folder: out, to: path, overwrite: overwrite)
                (bytes, what) = (r.bytes, "\(r.quantizedMatrices) quantized matrices" + (r.bits.map { ", \($0)-bit in groups of \(r.groupSize!)" } ?? ""))
            case .compressedTensors:
                let r = try CompressedTensorsExport.write(folder: out, to: path, overwrite: overwrite)
                (bytes, what) = (r.bytes, "\(r.quantizedLinears) linears pack-quantized")
            case .hf:
                let r = try HFExport.write(folder: out, to: path, overwrite: overwrite)
                (bytes, what) = (r.bytes, "F16, \(r.dequantizedMatrices) matrices dequantized")
            }
            let exported = String(format: "exported: %@ (%.1f MB), %@", path, Double(bytes) / 1e6, what)
            if output.json { printErr(exported) } else { print(exported) }
        }
    }
}

/// report.json / report.md of a quantization run.
struct QuantizeReport: Codable {
    let model: String
    let options: QuantizeOptions
    let seconds: Double
    let calibrationTokens: Int
    let linears: [LinearReport]
    let outputBytes: Int
    var warnings: [String]? = nil
    var subspace: SubspaceReport? = nil
    /// --resume: how many layers an earlier invocation had finished; `seconds` then covers this invocation only.
    var resumedAfterLayers: Int? = nil

    func write(to folder: String) throws {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        try e.encode(self).write(to: URL(fileURLWithPath: folder + "/report.json"), options: .atomic)
        var md = "# CoQuant quantization report\n\n"
        md += "- model: `\(model)`\n- method: \(options.method.rawValue), solver: \(options.solver.rawValue), scheme: \(options.scheme.name)\n"
        md += "- weights: \(options.scheme.weightBits)-bit \(options.weightSymmetric ? "symmetric" : "asymmetric"), \(options.scheme.weightGroupSize.map { "groups of \($0)" } ?? "per channel")\(options.weightClip ? ", MSE clip" : "")\n"
        md += "- calibration: \(options.nsamples) × \(options.seqlen) tokens from \(calibrationTokens), seed \(options.seed); percdamp \(options.percdamp)\(options.actOrder ? ", act-order" : "")\n"
        md += String(format: "- wall time: %.1f s%@; output %.1f MB\n\n", seconds,
                     resumedAfterLayers.map { " (this invocation, resumed after \($0) finished layer\($0 == 1 ? "" : "s"))" } ?? "", Double(outputBytes) / 1e6)
        for w in warnings ?? [] { md += "- warning: \(w)\n" }
        if let s = subspace {
            md += String(format: "- subspace: r = %d hidden channels, %d per head at %d bits; statistics %.1f s, eigendecompositions %.1f s\n\n",
                         s.high, s.headHigh, options.subspace?.highBits ?? 8, s.statisticsSeconds, s.basesSeconds)
            md += "Share of each block input's second moment (trace of C_x) captured by its high subspace:\n\n"
            md += "| layer | attention input | MLP input |\n|---:|---:|---:|\n"
            for (l, (a, m)) in zip(s.attentionEnergy, s.mlpEnergy).enumerated() { md += String(format: "| %d | %.4f | %.4f |\n", l, a, m) }
            md += "\n"
            if let checks = s.errorModel, checks.count > 1 {
                md += "Output-error model (COQUANT_RESQ.md §1.3) against measurement: relative error ‖XWᵀ − Q(XU)Q(WU)ᵀ‖²/‖XWᵀ‖² of each "
                md += "block input and its q/k/v or gate/up weights, on 256 tokens of the first calibration window, activations on "
                md += "the run's quantizers and weights rounded to nearest on max-range mixed grids (no GPTQ, no clip search). "
                md += String(format: "Spearman rank correlation of predicted and measured over the %d inputs: %.3f.\n\n",
                             checks.count, rankCorrelation(checks.map(\.predicted), checks.map(\.measured)))
                md += "| layer | input | predicted | measured | measured / predicted |\n|---:|---|---:|---:|---:|\n"
                for e in checks {
                    md += String(format: "| %d | %@ | %.4g | %.4g | %.2f |\n", e.layer, e.input, e.predicted, e.measured, e.measured / e.predicted)
                }
                md += "\n"
            } else {
                md += "Output-error model: not measured (the bases were read from a file, so no statistics pass ran).\n\n"
            }
        }
        md += "| layer | linear | loss | seconds | damping |\n|---:|---|---:|---:|---|\n"
        for r in linears {
            md += String(format: "| %d | %@ | %.6g | %.2f | %@ |\n", r.layer, r.name, r.loss, r.seconds,
                         r.dampingUsed.map { String(format: "%.3g%@", $0, r.dampingEscalations > 0 ? " (escalated ×\(r.dampingEscalations))" : "") } ?? "—")
        }
        try md.write(toFile: folder + "/report.md", atomically: true, encoding: .utf8)
    }
}


/// The ResQ / CoQuant part of a report: high-subspace sizes, stage timings and captured energy per layer.
struct SubspaceReport: Codable {
    let high: Int
    let headHigh: Int
    let statisticsSeconds: Double
    let basesSeconds: Double
    let attentionEnergy: [Double]
    let mlpEnergy: [Double]
    /// Predicted vs measured relative output error per layer and block input; nil when the bases came from a file.
    var errorModel: [OutputErrorCheck]? = nil
}
