import CoQuantModel
import CoQuantTensor
import Foundation

// What `coquant quantize` does with a model: the scheme's bit widths, the method (which rotations, which weight
// solver), the layer-wise calibration, and the fake quantization of activations and KV cache at inference.

/// W/A/KV bit widths as the field names them: W4A16, W3A16, W4A16g128, W8A8, W4A8, W4A4KV4, W4A4KV16, …
/// `W4A16` here is per-channel (the research-lineage meaning); add `g128` for groups of 128 input columns
/// (compressed-tensors' `W4A16` preset means g128).
public struct QuantScheme: Codable, Sendable, Equatable {
    public var weightBits: Int
    public var weightGroupSize: Int?
    public var activationBits: Int      // 16: activations stay fp32
    public var kvBits: Int              // 16: KV cache stays fp32
    /// A GGUF-native scheme, a llama.cpp file type (Q4_0, Q8_0, Q4_K_M, Q3_K_M, …): every linear solved on the exact
    /// grid of the block type llama.cpp's quantizer gives it under that file type (`GGUFFileType.linearType`), so
    /// the folder exports to a GGUF bit for bit. nil for the W/A/KV schemes.
    public var ggml: String?

    public init(weightBits: Int, weightGroupSize: Int? = nil, activationBits: Int = 16, kvBits: Int = 16) {
        self.weightBits = weightBits
        self.weightGroupSize = weightGroupSize
        self.activationBits = activationBits
        self.kvBits = kvBits
    }

    /// The llama.cpp file type of a GGUF-native scheme.
    public var ggufFileType: GGUFFileType? { ggml.flatMap { GGUFFileType(name: $0) } }

    public init(parsing name: String) throws {
        if let f = GGUFFileType(name: name) {
            self.init(weightBits: f.defaultType.codeBits!, weightGroupSize: f.defaultType.subBlockSize!)
            ggml = f.rawValue
            return
        }
        let s = name.uppercased().replacingOccurrences(of: "_", with: "")
        func number(after tag: Character, in text: Substring) -> (Int, Substring)? {
            guard text.first == tag else { return nil }
            let digits = text.dropFirst().prefix { $0.isNumber }
            guard let v = Int(digits) else { return nil }
            return (v, text.dropFirst(1 + digits.count))
        }
        var rest = Substring(s)
        guard let (w, r1) = number(after: "W", in: rest), let (a, r2) = number(after: "A", in: r1) else {
            throw QuantError.invalidParameter("unknown scheme \"\(name)\" (examples: W4A16, W3A16, W4A16g128, W8A8, W4A4KV4, Q4_0, Q8_0, Q4_K_M)")
        }
        rest = r2
        var kv = 16
        if rest.hasPrefix("KV") {
            let digits = rest.dropFirst(2).prefix { $0.isNumber }
            guard let v = Int(digits) else { throw QuantError.invalidParameter("unknown scheme \"\(name)\" (examples: W4A16, W3A16, W4A16g128, W8A8, W4A4KV4, Q4_0, Q8_0, Q4_K_M)") }
            kv = v
            rest = rest.dropFirst(2 + digits.count)
        }
        var group: Int?
        if rest.hasPrefix("G") {
            guard let v = Int(rest.dropFirst()) else { throw QuantError.invalidParameter("unknown scheme \"\(name)\" (examples: W4A16, W3A16, W4A16g128, W8A8, W4A4KV4, Q4_0, Q8_0, Q4_K_M)") }
            group = v
            rest = ""
        }
        guard rest.isEmpty else { throw QuantError.invalidParameter("unknown scheme \"\(name)\" (examples: W4A16, W3A16, W4A16g128, W8A8, W4A4KV4, Q4_0, Q8_0, Q4_K_M)") }
        for b in [w, a, kv] where !((2...8).contains(b) || b == 16) { throw QuantError.unsupportedBits(b) }
        guard w <= 8 else { throw QuantError.invalidParameter("\(name): weights must be 2–8 bits") }
        self.init(weightBits: w, weightGroupSize: group, activationBits: a, kvBits: kv)
    }

    public var name: String {
        if let ggml { return ggml }
        return "W\(weightBits)A\(activationBits)" + (kvBits < 16 ? "KV\(kvBits)" : "") + (weightGroupSize.map { "g\($0)" } ?? "")
    }
}

public enum Method: String, Codable, Sendable, CaseIterable {
    case rtn, gptq, cdquant, quarot
    case resq       // mixed-precision subspace from the activation second moment (COQUANT_RESQ.md §1.3, a_cov)
    case coquant    // mixed-precision subspace from activation and weight second moments (wa_cov)

    /// Whether the method keeps a high-precision subspace (ResQ / CoQuant).
    public var usesSubspace: Bool { self == .resq || self == .coquant }
}

/// ResQ / CoQuant settings (COQUANT_RESQ.md §1.5, §2.1). Defaults are the reference scripts'.
public struct SubspaceOptions: Codable, Sendable, Equatable {
    public var granularity: BasisGranularity = .perLayer
    /// r = ⌊f·d⌋ hidden channels (and ⌊f·head_dim⌋ per head) kept at `highBits`.
    public var highFraction = 0.125
    public var highBits = 8
    /// Post-RoPE key bases per KV head or pooled over the layer's heads; nil: the reference's for the granularity
    /// (per-layer: per-head, shared: pooled). Optional so folders written before it existed still decode.
    public var keyBasis: KeyBasis?
    /// The reference's `use_kv_wa_cov`: V and K bases weighted by o_proj's columns and the queries (off by default).
    public var kvWeightAware = false
    /// The reference's `use_pre_fuse_lambda_compensation` (CoQuant per-layer; off by default). Optional so
    /// reports written before it existed still decode.
    public var preFuseLambdaCompensation: Bool?
    /// Per-layer granularity: bits of the online basis changes' inputs (the residual stream, per token). nil: 8, the
    /// reference's; 16 leaves them in full precision, to measure what that rounding costs.
    public var residualBits: Int?
    /// Bases file: read when it exists (no statistics pass), written after computing them otherwise.
    public var basesFile: String?
    /// Second-moment statistics file: read when it exists and matches this model and these windows (no statistics
    /// pass), written after the pass otherwise. Shared by runs that differ in method, granularity or solver.
    public var statisticsFile: String?

    public init() {}
}

public enum SolverKind: String, Codable, Sendable, CaseIterable {
    case rtn, gptq, cdquant
}

/// How the embedding table and the LM head are stored: int8 with one scale per row (the default, as llama.cpp keeps
/// them at Q8_0), 4-bit asymmetric in groups of 32 columns (as llama.cpp's Q4_1), IEEE half, or fp32 (the papers).
public enum EmbeddingStorage: String, Codable, Sendable, CaseIterable {
    case int8 = "int8-row"
    case int4 = "int4-g32"
    case f16
    case f32
}

public struct QuantizeOptions: Codable, Sendable {
    public var method: Method
    public var scheme: QuantScheme
    public var solver: SolverKind
    public var weightSymmetric = true
    public var weightClip = false            // the reference's MSE clip search for weights
    /// The weight grid when the user names one (`--weight-grid`): "gptq" (quant.py's symmetric grid), "quarot"
    /// (QuaRot's signed one) or a GGUF block type ("Q4_0", "Q6_K", …). nil: implied by the method and scheme.
    public var weightGridName: String?
    // Activations and the KV cache are asymmetric per token (per token and head for KV), as the reference runs.
    public var activationClipRatio = 1.0
    public var kvClipRatio = 1.0
    public var nsamples = 128
    public var seqlen = 2048
    public var seed: UInt32 = 0
    public var percdamp = 0.01
    public var actOrder = false
    /// GPTQ/CDQuant with groups: every group's grid from the original weights, before any error feedback (GPTQ's
    /// `--static-groups`); nil or false: at each group's first column, from the weights updated so far.
    public var staticGroups: Bool?
    /// Weight of each calibration window's first token (the attention sink) in the layer Hessians; nil: 1.
    public var sinkWeight: Double?
    public var centerEmbeddings = true       // the reference's embedding mean-centring when norms are fused
    /// ResQ / CoQuant only (nil otherwise; optional so folders written before it existed still decode).
    public var subspace: SubspaceOptions?
    /// Activation bits at the down_proj input when they differ from the scheme's (QuaRot's `--int8_down_proj`: 8).
    public var downProjActivationBits: Int?
    /// QuaRot: the online Hadamard across heads at the o_proj input (its fused half in o_proj). nil in folders
    /// written before it existed, which were quantized without it.
    public var headMixing: Bool?
    /// QuaRot: false keeps only the rotations that fuse into weights (R1 on the residual stream, the value heads'
    /// Hadamards) and drops the online ones (down_proj input, across heads, queries/keys), so a weight-only result is
    /// a plain model that GGUF / MLX / compressed-tensors can carry. nil: true.
    public var onlineRotations: Bool?
    /// How the embedding table and the LM head are stored: int8 per row (llama.cpp keeps them at Q8_0) or fp32 (the
    /// papers' protocol, which every research table uses). nil in folders written before it existed: fp32.
    public var embeddings: EmbeddingStorage?

    public init(method: Method, scheme: QuantScheme, solver: SolverKind? = nil) {
        self.method = method
        self.scheme = scheme
        self.solver = solver ?? (method == .rtn ? .rtn : method == .cdquant ? .cdquant : .gptq)
        if method.usesSubspace { subspace = SubspaceOptions() }
        if method == .quarot { headMixing = true }
        embeddings = .int8
    }

    /// Symmetric weights are GPTQ's `quant.py` grid, except where the reference code is QuaRot's: QuaRot, ResQ and
    /// CoQuant, and any scheme that quantizes activations or the KV cache (RTN W4A4KV4 without rotation is QuaRot's
    /// `main.py --w_rtn` without `--rotate`), so that every row of a W4A4KV4 table has the same weight grid:
    /// `WeightQuantizer`'s signed codes, s = max|w|/(2^(b−1) − 1).
    public func weightGrid(bits: Int? = nil) throws -> QuantGrid {
        if let f = scheme.ggufFileType { return try ggmlGrid(f.defaultType) }
        return try uniformWeightGrid(bits: bits)
    }

    /// The grid of decoder linear `name` of layer `layer`: a GGUF scheme's per-tensor block type, else `weightGrid()`.
    public func weightGrid(forLinear name: String, layer: Int, config c: ModelConfiguration) throws -> QuantGrid {
        guard let f = scheme.ggufFileType else { return try weightGrid() }
        let columns = name == "mlp.down_proj" ? c.intermediateSize : name == "self_attn.o_proj" ? c.numAttentionHeads * c.headDim : c.hiddenSize
        let t = f.linearType(name, layer: layer, config: c, columns: columns)
        guard t.codeBits != nil else {
            throw QuantError.invalidParameter("--scheme \(scheme.name): \(name) has \(columns) inputs, not a multiple of 32, so no GGUF block type fits it")
        }
        return try ggmlGrid(t)
    }

    private func ggmlGrid(_ t: GGMLType) throws -> QuantGrid {
        guard weightSymmetric, !weightClip else {
            throw QuantError.invalidParameter("--scheme \(scheme.name) places its own grid (fp16 scales per block): drop --w-asym and --w-clip")
        }
        return try .weight(bits: t.codeBits!, scheme: .ggml(t), groupSize: t.subBlockSize!)
    }

    private func uniformWeightGrid(bits: Int?) throws -> QuantGrid {
        var quarotCode = method.usesSubspace || method == .quarot || scheme.activationBits < 16 || scheme.kvBits < 16
        switch weightGridName?.lowercased() {
        case nil: break
        case "gptq": quarotCode = false
        case "quarot": quarotCode = true
        case let name?:
            guard let t = GGMLType.codeTypes.first(where: { $0.name.lowercased() == name }) else {
                throw QuantError.invalidParameter("unknown --weight-grid \(weightGridName!) (gptq, quarot, or a GGUF block type: \(GGMLType.codeTypes.map(\.name).joined(separator: ", ")))")
            }
            guard (bits ?? scheme.weightBits) == t.codeBits!, scheme.weightGroupSize == t.subBlockSize! else {
                throw QuantError.invalidParameter("--weight-grid \(t.name) is \(t.codeBits!)-bit in groups of \(t.subBlockSize!): use it with --scheme W\(t.codeBits!)A16g\(t.subBlockSize!) (or --scheme \(t.name) for llama.cpp's per-tensor mix)")
            }
            return try ggmlGrid(t)
        }
        let symmetric: GridScheme = quarotCode ? .signedSymmetric : .symmetric
        return try .weight(bits: bits ?? scheme.weightBits, scheme: weightSymmetric ? symmetric : .asymmetric,
                           groupSize: scheme.weightGroupSize, mse: weightClip ? .reference : nil)
    }
}

extension QuantizeOptions {
    /// What the options alone rule out, checked before any work (a bad clip ratio found by the first forward pass
    /// with fake quantization would come after hours of solving). ResQ/CoQuant quantize weights per output row, so
    /// no group size.
    public func check() throws {
        if let g = scheme.weightGroupSize, g <= 0 {
            throw QuantError.invalidParameter("--scheme \(scheme.name): group size \(g) must be positive (drop the g suffix for per channel)")
        }
        if method.usesSubspace, let g = scheme.weightGroupSize {
            throw QuantError.invalidParameter("--method \(method.rawValue) quantizes weights per output row: drop the group size \(g) from --scheme \(scheme.name)")
        }
        for (flag, ratio) in [("--a-clip-ratio", activationClipRatio), ("--kv-clip-ratio", kvClipRatio)] where !(ratio > 0 && ratio <= 1) {
            throw QuantError.invalidParameter("\(flag) \(ratio) must be in (0, 1]")
        }
        guard nsamples > 0 else { throw QuantError.invalidParameter("--nsamples \(nsamples) must be positive") }
        guard seqlen >= 2 else { throw QuantError.invalidParameter("--seqlen \(seqlen) must be at least 2") }
        if let w = sinkWeight, !(w > 0 && w.isFinite) { throw QuantError.invalidParameter("--sink-weight \(w) must be finite and > 0") }
        guard percdamp >= 0 && percdamp.isFinite else { throw QuantError.invalidParameter("--percdamp \(percdamp) must be finite and ≥ 0") }
        _ = try weightGrid()
    }

    /// What a model of configuration `c` rules out too: a weight group size must divide every linear's input
    /// dimension. Cheap, so callers run it before writing anything.
    public func check(for c: ModelConfiguration) throws {
        try check()
        if scheme.ggufFileType != nil {
            for name in ["self_attn.q_proj", "self_attn.o_proj", "mlp.down_proj"] { _ = try weightGrid(forLinear: name, layer: 0, config: c) }
            return
        }
        guard let g = scheme.weightGroupSize else { return }
        let dimensions = [("hidden_size", c.hiddenSize), ("num_attention_heads × head_dim", c.numAttentionHeads * c.headDim),
                          ("intermediate_size", c.intermediateSize)]
        for (name, dim) in dimensions where dim % g != 0 {
            throw QuantError.invalidParameter("group size \(g) does not divide the model's \(name) \(dim)")
        }
    }
}

/// Everything a quantization run produced, for the folder and the report.
public struct QuantizationResult {
    public var packed: [String: PackedLinear] = [:]     // "model.layers.i.self_attn.q_proj" → codes and grid
    public var reports: [LinearReport] = []
    public var calibrationSeconds = 0.0
    public var warnings: [String] = []
    /// ResQ / CoQuant: what runs online at inference, the bases, and the seconds of the statistics pass and of the
    /// eigendecompositions.
    public var subspace: SubspaceOnline?
    public var bases: SubspaceBases?
    public var statisticsSeconds = 0.0
    public var basesSeconds = 0.0
    /// ResQ / CoQuant with a statistics pass: the output-error model against measurement per layer and block input.
    public var errorChecks: [OutputErrorCheck] = []
    /// The embedding table and untied LM head as int8 rows, when the options store them so (the model holds their
    /// dequantized values). At int4 they are in `packed` as "model.embed_tokens" and "lm_head".
    public var embeddings: Int8Rows?
    public var lmHead: Int8Rows?
}

/// Quantizes `model` in place: rotations (QuaRot), layer-wise weight solving on the calibration windows, and the
/// weights replaced by exactly what the packed codes decode to. Activation/KV fake quantization is installed
/// afterwards with `installFakeQuantization`.
/// A finished layer, as a checkpoint stores it: its packed linears and their reports.
public struct FinishedLayer {
    public var packed: [String: PackedLinear]
    public var reports: [LinearReport]
    public init(packed: [String: PackedLinear], reports: [LinearReport]) {
        self.packed = packed
        self.reports = reports
    }
}

/// `resume` holds the layers an interrupted run finished (0..<k, from `onLayer`'s checkpoints): their weights are put
/// back and the calibration inputs propagated through them instead of solving them again.
public func quantizeModel(_ model: LlamaModel, calibration windows: [[Int]], options: QuantizeOptions,
                          resume: [FinishedLayer] = [],
                          onLayer: (Int, FinishedLayer) throws -> Void = { _, _ in },
                          onLinear: (LinearReport) -> Void = { _ in },
                          onStatistics: (Int) -> Void = { _ in }) throws -> QuantizationResult {
    let grid = try options.weightGrid()
    try options.check(for: model.config)
    let linearGrids = try (0..<model.config.numHiddenLayers).map { l in
        try Dictionary(uniqueKeysWithValues: LinearGroup.allCases.flatMap(\.names).map { ($0, try options.weightGrid(forLinear: $0, layer: l, config: model.config)) })
    }
    var result = QuantizationResult()
    if options.method == .quarot, let online = applyQuaRotRotations(model, options: options) {
        result.warnings += online.notes
        installHooks(model, online: online, activations: nil, keys: nil, values: nil)     // calibrate with the online rotations, no fake quant
    }
    var columnGrids: (String) throws -> ColumnGrids? = { _ in nil }
    if options.method.usesSubspace {
        let sub = options.subspace ?? SubspaceOptions()
        let compensate = sub.preFuseLambdaCompensation ?? false
        let preFusionNorms = compensate ? model.layers.map {
            (attention: $0.inputLayernorm.map(Double.init), mlp: $0.postAttentionLayernorm.map(Double.init))
        } : nil
        fuseNorms(model, centerEmbeddings: options.centerEmbeddings)
        let objective: BasisObjective = options.method == .resq ? .activation : .weightActivation
        let bases: SubspaceBases
        if let file = sub.basesFile, FileManager.default.fileExists(atPath: file) {
            bases = try SubspaceBases.read(file, config: model.config)
            let (r, rh) = try highChannels(fraction: sub.highFraction, config: model.config)
            let keyBasis = sub.keyBasis ?? .reference(for: sub.granularity)
            guard bases.objective == objective, bases.granularity == sub.granularity, bases.keyBasis == keyBasis,
                  bases.high == r, bases.headHigh == rh, bases.preFusionCompensation == compensate else {
                func describe(_ o: BasisObjective, _ g: BasisGranularity, _ k: KeyBasis, _ r: Int, _ rh: Int, _ comp: Bool) -> String {
                    "\(o.rawValue) \(g.rawValue) (\(k.rawValue) keys) with r = \(r)/\(rh)\(comp ? ", pre-fusion λ compensation" : "")"
                }
                throw SubspaceError(description: "\(file): bases are \(describe(bases.objective, bases.granularity, bases.keyBasis, bases.high, bases.headHigh, bases.preFusionCompensation)), this run needs \(describe(objective, sub.granularity, keyBasis, r, rh, compensate))")
            }
            result.warnings.append("bases read from \(file) (no statistics pass)")
        } else {
            var t = ContinuousClock.now
            let stats: SubspaceStatistics
            let sampleTokens = 256
            let fingerprint = sub.statisticsFile.map { _ in
                StatisticsFingerprint(model: model, windows: windows, withQueries: sub.kvWeightAware, sampleTokens: sampleTokens)
            }
            if let file = sub.statisticsFile, let fingerprint, FileManager.default.fileExists(atPath: file) {
                stats = try SubspaceStatistics.read(file, config: model.config, fingerprint: fingerprint)
                result.warnings.append("statistics read from \(file) (no statistics pass)")
            } else {
                stats = SubspaceStatistics.collect(model, windows: windows, withQueries: sub.kvWeightAware,
                                                   sampleTokens: sampleTokens, progress: onStatistics)
                if let file = sub.statisticsFile, let fingerprint { try stats.write(to: file, fingerprint: fingerprint) }
            }
            result.statisticsSeconds = seconds(since: t)
            t = ContinuousClock.now
            bases = try buildBases(stats, model: model, objective: objective, granularity: sub.granularity,
                                   keyBasis: sub.keyBasis, highFraction: sub.highFraction, kvWeightAware: sub.kvWeightAware,
                                   preFusionNorms: preFusionNorms, seed: UInt64(options.seed))
            result.basesSeconds = seconds(since: t)
            if let file = sub.basesFile { try bases.write(to: file, config: model.config) }
            result.errorChecks = try checkOutputErrorModel(model, stats, bases, options: options)
        }
        let online = fuseSubspaceBases(model, bases, centerEmbeddings: options.centerEmbeddings, normsFused: true)
        result.warnings += online.notes
        // Hessians from unquantized activations with the online Hadamard active, as the reference's GPTQ pass.
        installSubspaceHooks(model, online: online, quantizers: nil)
        result.bases = bases
        result.subspace = online
        let c = model.config, hd = c.headDim
        let low = try options.weightGrid(), high = try options.weightGrid(bits: sub.highBits)
        columnGrids = { name in
            switch name {
            case "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj":
                return try ColumnGrids(columns: c.hiddenSize, high: Array((c.hiddenSize - bases.high)..<c.hiddenSize), low: low, highGrid: high)
            case "self_attn.o_proj":
                // The last r_h channels of every head (the reference permutes them to the end; the solvers process
                // high columns last, which is the same thing).
                let highColumns = (0..<c.numAttentionHeads).flatMap { j in ((j + 1) * hd - bases.headHigh)..<((j + 1) * hd) }
                return try ColumnGrids(columns: c.numAttentionHeads * hd, high: highColumns, low: low, highGrid: high)
            default:
                return nil      // down_proj: Hadamard and uniform low bits
            }
        }
    }
    func solver(_ cg: ColumnGrids?) -> WeightSolver {
        var gptq = GPTQ(percDamp: options.percdamp, actOrder: options.actOrder, staticGroups: options.staticGroups ?? false)
        gptq.columnGrids = cg
        switch options.solver {
        case .rtn: return RTN(columnGrids: cg)
        case .gptq: return gptq
        case .cdquant: return CDQuant(gptq: gptq)
        }
    }
    // Mixed-precision linears pack each column group's codes at its own width (group_bits); `bits` is the widest.
    // A GGUF mix (Q4_K_M: Q4_K and Q6_K linears) packs at its widest type, the narrower linears' groups at their own.
    let packedBits = options.method.usesSubspace ? max(grid.bits, options.subspace?.highBits ?? 8)
        : linearGrids.flatMap(\.values).map(\.bits).max() ?? grid.bits
    let start = ContinuousClock.now
    let calibration = try LayerwiseCalibration(model: model, windows: windows)
    calibration.sinkWeight = Float(options.sinkWeight ?? 1)
    for (l, done) in resume.enumerated() {
        for (name, packed) in done.packed {
            let linear = name.replacingOccurrences(of: "model.layers.\(l).", with: "")
            guard model.layers[l][linear: linear].weight.count == packed.rows * packed.cols else {
                throw PipelineError(description: "resume: \(name) in the checkpoint does not fit this model")
            }
            model.layers[l][linear: linear].weight = packed.dequantized()
            result.packed[name] = packed
        }
        result.reports += done.reports
    }
    calibration.skip(to: resume.count)
    while calibration.nextLayer < model.layers.count {
        let l = calibration.nextLayer
        let reports = try calibration.quantizeNextLayer(solve: { layer, name, W, H in
            guard let grid = linearGrids[layer][name] else { throw PipelineError(description: "no grid for \(name)") }
            var q = try solver(try columnGrids(name)).solve(W: W, H: options.solver == .rtn ? nil : H, grid: grid)
            let packed = PackedLinear(bits: packedBits, rows: W.rows, cols: W.cols, codes: q.codes,
                                      scales: q.scales.data.map { Float($0) }, zeros: q.zeros.data.map { Float($0) },
                                      groupIndex: q.groupIndex.map { Int32($0) },
                                      groupBits: q.groupMaxq.map { $0.map { Int.bitWidth - $0.leadingZeroBitCount } }
                                          ?? (packedBits == grid.bits ? nil : Array(repeating: grid.bits, count: q.scales.cols)))
            // The model computes with exactly what the saved folder will decode to.
            q.values = Matrix(rows: W.rows, cols: W.cols, data: packed.dequantized().map(Double.init))
            result.packed["model.layers.\(layer).\(name)"] = packed
            return q
        }, onLinear: onLinear)
        result.reports += reports
        try onLayer(l, FinishedLayer(packed: result.packed.filter { $0.key.hasPrefix("model.layers.\(l).") }, reports: reports))
    }
    result.calibrationSeconds = seconds(since: start)
    // The embeddings and head as the folder stores them, so the in-memory model still equals the folder.
    let c = model.config
    switch options.embeddings ?? .f32 {
    case .f32:
        break
    case .int8:
        let table = Int8Rows(quantizing: model.embedTokens, rows: c.vocabSize, cols: c.hiddenSize)
        model.embedTokens = table.dequantized()
        result.embeddings = table
        if var head = model.lmHead {
            let rows = Int8Rows(quantizing: head.weight, rows: head.outFeatures, cols: head.inFeatures)
            head.weight = rows.dequantized()
            model.lmHead = head
            result.lmHead = rows
        }
    case .f16:
        model.embedTokens = F16Rows(rounding: model.embedTokens, rows: c.vocabSize, cols: c.hiddenSize).dequantized()
        if var head = model.lmHead {
            head.weight = F16Rows(rounding: head.weight, rows: head.outFeatures, cols: head.inFeatures).dequantized()
            model.lmHead = head
        }
    case .int4:
        let table = try int4Rows(model.embedTokens, rows: c.vocabSize, cols: c.hiddenSize)
        model.embedTokens = table.dequantized()
        result.packed["model.embed_tokens"] = table
        if var head = model.lmHead {
            let rows = try int4Rows(head.weight, rows: head.outFeatures, cols: head.inFeatures)
            head.weight = rows.dequantized()
            model.lmHead = head
            result.packed["lm_head"] = rows
        }
    }
    return result
}

/// A table rounded to nearest on 4-bit asymmetric grids of 32 columns (min/max range, as llama.cpp's Q4_1).
func int4Rows(_ w: [Float], rows: Int, cols: Int) throws -> PackedLinear {
    guard cols % 32 == 0 else {
        throw QuantError.invalidParameter("--embeddings int4 needs a hidden size divisible by 32 (it is \(cols)); use int8")
    }
    let q = try quantize(Matrix(rows: rows, cols: cols, data: w.map(Double.init)), grid: .weight(bits: 4, groupSize: 32))
    return PackedLinear(bits: 4, rows: rows, cols: cols, codes: q.codes, scales: q.scales.data.map(Float.init),
                        zeros: q.zeros.data.map(Float.init), groupIndex: (0..<cols).map { Int32($0 / 32) })
}

/// The rotations QuaRot applies online, at inference: a Hadamard transform of the down_proj input (its inverse is
/// fused into down_proj) and a per-head Hadamard of the post-RoPE queries and keys (which leaves q·kᵀ unchanged and
/// spreads key outliers before KV quantization).
public struct OnlineRotations: Sendable {
    public let downProj: HadamardTransform
    public let head: HadamardTransform
    /// Across the H heads of the o_proj input, per channel (QuaRot's online `had_K` of size num_heads).
    public let acrossHeads: HadamardTransform?
    let headDim: Int
    public var notes: [String] {
        ([downProj, head] + (acrossHeads.map { [$0] } ?? [])).filter { !$0.construction.isHadamard }.map {
            "no Hadamard matrix of size \($0.size) is known here: using \($0.construction) instead"
        }
    }

    public init(config: ModelConfiguration, headMixing: Bool = true) {
        downProj = HadamardTransform(size: config.intermediateSize)
        head = HadamardTransform(size: config.headDim)
        acrossHeads = headMixing && config.numAttentionHeads > 1 ? HadamardTransform(size: config.numAttentionHeads) : nil
        headDim = config.headDim
    }

    /// x [rows, H·hd] viewed as [rows, H, hd]: every channel's H-vector ← M_H · it. Applied to the o_proj input
    /// online and to o_proj's weight rows when fusing, so Σ_k x'_k w'_k = xᵀ M_Hᵀ M_H w = x·w.
    func mixHeads(_ x: UnsafeMutablePointer<Float>, rows: Int) {
        guard let t = acrossHeads else { return }
        let H = t.size, hd = headDim
        let buffer = UnsafeMutablePointer<Float>.allocate(capacity: hd * H)
        defer { buffer.deallocate() }
        for r in 0..<rows {
            let row = x + r * H * hd
            for j in 0..<H { for c in 0..<hd { buffer[c * H + j] = row[j * hd + c] } }
            t.apply(buffer, rows: hd)
            for j in 0..<H { for c in 0..<hd { row[j * hd + c] = buffer[c * H + j] } }
        }
    }
}

/// QuaRot's fused rotations (COQUANT_RESQ.md §2.2, QuaRot `rotate_model`): norms fused (with the reference's
/// embedding centring unless turned off), the residual stream rotated by a random Hadamard matrix R1 (seeded),
/// every value head rotated by a Hadamard matrix of head_dim (fused into v_proj and o_proj), the o_proj input mixed
/// across heads by a Hadamard matrix of size H online (its other half fused into o_proj), and down_proj's input
/// side multiplied by the Hadamard transform that the forward pass applies online. At full precision the function
/// is unchanged. With `options.onlineRotations == false` only the fused ones (norms, R1, value heads) are applied,
/// and nil is returned: nothing runs online.
public func applyQuaRotRotations(_ model: LlamaModel, options: QuantizeOptions) -> OnlineRotations? {
    let c = model.config
    fuseNorms(model, centerEmbeddings: options.centerEmbeddings)
    rotateResidual(model, randomHadamardMatrix(c.hiddenSize, seed: UInt64(options.seed)))
    let online = OnlineRotations(config: c, headMixing: options.headMixing ?? false)
    let Qv = online.head.matrix(transposed: true)
    guard options.onlineRotations != false else {
        for l in model.layers.indices { rotateValueHeads(model, layer: l, Array(repeating: Qv, count: c.numKeyValueHeads)) }
        return nil
    }
    for l in model.layers.indices {
        rotateValueHeads(model, layer: l, Array(repeating: Qv, count: c.numKeyValueHeads))
        var o = model.layers[l].selfAttn.oProj
        o.weight.withUnsafeMutableBufferPointer { online.mixHeads($0.baseAddress!, rows: o.outFeatures) }
        model.layers[l].selfAttn.oProj = o
        var down = model.layers[l].mlp.downProj
        down.weight.withUnsafeMutableBufferPointer { online.downProj.apply($0.baseAddress!, rows: down.outFeatures) }
        model.layers[l].mlp.downProj = down
    }
    return online
}

/// Fake quantization at inference through the forward hooks: per-token activations at the inputs of every
/// linear of the decoder layers (not the LM head, as the reference), and the K/V cache per (token, head); with
/// QuaRot's online rotations applied first. ResQ / CoQuant pass the online state of their fused bases: their
/// quantizers keep the high subspace at `highBits`, and the key rotation becomes INT8 when the KV cache is quantized.
/// `runtime: true` leaves the inputs of the decoder's linears and the K/V cache alone (the Runtime's kernels quantize
/// them to integer codes with the same grids: `LlamaModel.kvCacheFormat`); the online ops and the other quantizers
/// are installed as in the simulator.
public func installFakeQuantization(_ model: LlamaModel, scheme: QuantScheme, options: QuantizeOptions,
                                    subspace: SubspaceOnline? = nil, runtime: Bool = false) throws {
    if options.method.usesSubspace {
        guard var online = subspace else {
            throw QuantError.invalidParameter("\(options.method.rawValue) needs the online state of its fused bases")
        }
        if scheme.kvBits < 16 { online.quantizeKeyRotationsToInt8() }
        var quantizers = try SubspaceQuantizers(activationBits: scheme.activationBits, kvBits: scheme.kvBits,
                                                highBits: options.subspace?.highBits ?? 8,
                                                residualBits: options.subspace?.residualBits ?? 8,
                                                activationClipRatio: Float(options.activationClipRatio),
                                                kvClipRatio: Float(options.kvClipRatio))
        if let b = options.downProjActivationBits, scheme.activationBits < 16 {
            quantizers.downProj = b < 16 ? try ActivationQuantizer(bits: b, clipRatio: Float(options.activationClipRatio)) : nil
        }
        if runtime {
            quantizers.activationLow = nil; quantizers.activationHigh = nil
            quantizers.headLow = nil; quantizers.headHigh = nil; quantizers.downProj = nil
            quantizers.keyLow = nil; quantizers.keyHigh = nil; quantizers.kvLow = nil; quantizers.kvHigh = nil
        }
        installSubspaceHooks(model, online: online, quantizers: quantizers)
        return
    }
    let hd = model.config.headDim
    let activations = scheme.activationBits < 16
        ? try ActivationQuantizer(bits: scheme.activationBits, clipRatio: Float(options.activationClipRatio)) : nil
    // Per (token, head) groups; the keys' range is forced to contain 0 and the values' is not, as QuaRot's
    // reference quantizes them (K through the per-token path of `ActQuantizer` on [T·H, hd], V group-wise).
    let values = scheme.kvBits < 16 && !runtime
        ? try ActivationQuantizer(bits: scheme.kvBits, groupSize: hd, clipRatio: Float(options.kvClipRatio)) : nil
    let keys = scheme.kvBits < 16 && !runtime
        ? try ActivationQuantizer(bits: scheme.kvBits, groupSize: hd, clipRatio: Float(options.kvClipRatio),
                                  rangeRule: .includeZero) : nil
    var downProj = activations
    if let b = options.downProjActivationBits, activations != nil {
        downProj = b < 16 ? try ActivationQuantizer(bits: b, clipRatio: Float(options.activationClipRatio)) : nil
    }
    installHooks(model, online: options.method == .quarot && options.onlineRotations != false
                     ? OnlineRotations(config: model.config, headMixing: options.headMixing ?? false) : nil,
                 activations: runtime ? nil : activations, keys: keys, values: values, downProj: runtime ? .some(nil) : downProj)
}

/// `downProj`: the down_proj input's quantizer (default: `activations`), so that layer type can differ.
func installHooks(_ model: LlamaModel, online: OnlineRotations?, activations: ActivationQuantizer?, keys: ActivationQuantizer?,
                  values: ActivationQuantizer?, downProj: ActivationQuantizer?? = nil) {
    let downProj = downProj ?? activations
    if online == nil && activations == nil && keys == nil && values == nil { model.hook = nil; return }
    let hd = model.config.headDim
    model.hook = { _, site, x, rows, cols in
        switch site {
        case .attentionInput, .mlpInput:
            try? activations?.apply(x, rows: rows, cols: cols)
        case .oProjInput:
            online?.mixHeads(x, rows: rows)
            try? activations?.apply(x, rows: rows, cols: cols)
        case .downProjInput:
            online?.downProj.apply(x, rows: rows)
            try? downProj?.apply(x, rows: rows, cols: cols)
        case .queries:
            online?.head.apply(x, rows: rows * cols / hd)
        case .keys:
            online?.head.apply(x, rows: rows * cols / hd)
            try? keys?.apply(x, rows: rows, cols: cols)
        case .values:
            try? values?.apply(x, rows: rows, cols: cols)
        case .lmHeadInput, .basisChangeInput:
            break
        }
    }
}
