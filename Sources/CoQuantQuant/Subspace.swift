import CoQuantModel
import CoQuantTensor
import Foundation

// ResQ and CoQuant: the high-precision subspace (COQUANT_RESQ.md §1.2–§1.5, §2.1).
//
// Shapes: d hidden, hd head_dim, H query heads, KV key/value heads, g = H/KV, N calibration tokens,
// r = ⌊f·d⌋ high channels of the hidden dim, r_h = ⌊f·hd⌋ per head (f = high fraction, 1/8 by default).
//
//   C_x [d, d]   = (1/N) Σ x xᵀ, x the RMSNorm output (unit weight after norm fusion) entering q/k/v or gate/up
//   C_w [d, d]   = Σ W̄ᵀW̄ over the linears reading x (q+k+v or gate+up; biases ignored)
//   ResQ    (a_cov):  M = C_x
//   CoQuant (wa_cov): M = λx·C_x + λw·C_w,  λx = γ_L·tr C_w,  λw = γ_L·tr C_x,  γ_L = (α_L² + β_L²)/(d − r)
//   P = eigenvectors of M + 0.01·mean(diag M)·I, eigenvalues ascending (the last r columns span the top-r subspace)
//   U = P·blockdiag(R_L, R_H), R_L ∈ O(d − r), R_H ∈ O(r) random (rotations inside each subspace)
//
// Per head: the value basis P_v [hd, hd] from the v_proj output of each KV head, the key basis P_k from the
// post-RoPE keys of each KV head (with --kv-weight-aware: V weighted with o_proj's columns, K with the post-RoPE
// queries of its group, as the reference's `use_kv_wa_cov`).

/// Which second moment is eigendecomposed (the reference's `--basis_cov_mode`).
public enum BasisObjective: String, Codable, Sendable {
    case activation = "a_cov"             // ResQ
    case weightActivation = "wa_cov"      // CoQuant
}

/// `per-layer`: a basis per layer and block input, residual basis changes online (the CoQuant reference).
/// `shared`: one basis for the whole residual stream, pooled over all layers (ResQ's official `full_shared`).
public enum BasisGranularity: String, Codable, Sendable, CaseIterable {
    case perLayer = "per-layer"
    case shared
}

/// The post-RoPE key bases of a layer. `per-head`: each KV head's own (the CoQuant reference's per-layer bases).
/// `pooled`: one for all KV heads of the layer, from their summed second moments (ResQ's official U_C, the default of
/// `shared`). Pooling costs models whose heads' keys point in different directions: Qwen2's k_proj biases put most of
/// each head's key energy in a few head-specific directions, which one pooled r_h-channel block cannot hold for both
/// heads, so the 4-bit low block gets the overflow (README, "Qwen2.5-Coder-0.5B").
public enum KeyBasis: String, Codable, Sendable, CaseIterable {
    case perHead = "per-head"
    case pooled

    /// What the reference does for each granularity.
    public static func reference(for granularity: BasisGranularity) -> KeyBasis {
        granularity == .shared ? .pooled : .perHead
    }
}

/// The reference's `quant_rel_error_coeff(b)` = 1/max((2^(b−1) − 1)², 1), and 0 at 16 bits or more.
public func quantRelativeErrorCoefficient(bits: Int) -> Double {
    bits >= 16 ? 0 : 1 / max(pow(pow(2, Double(bits - 1)) - 1, 2), 1)
}

/// CoQuant's closed-form weighted-PCA objective M = λx·C_x + λw·C_w (`compute_fro_proxy_lambda_terms`).
/// The bit widths only scale M (γ_L), so they never change the basis (COQUANT_RESQ.md §1.3, consequence 2).
public func coquantObjective(Cx: Matrix<Double>, Cw: Matrix<Double>, high r: Int, lowBits: Int = 4) -> Matrix<Double> {
    precondition(Cx.rows == Cw.rows && Cx.cols == Cw.cols && Cx.rows == Cx.cols)
    let d = Cx.rows
    let a = quantRelativeErrorCoefficient(bits: lowBits)
    let gammaLow = (a + a) / Double(max(d - r, 1))
    let lambdaX = gammaLow * trace(Cw), lambdaW = gammaLow * trace(Cx)
    var M = Cx
    for i in M.data.indices { M.data[i] = lambdaX * Cx.data[i] + lambdaW * Cw.data[i] }
    return M
}

func trace(_ A: Matrix<Double>) -> Double { (0..<min(A.rows, A.cols)).reduce(0) { $0 + A[$1, $1] } }

/// `perform_eigen_decomp`: M + 0.01·mean(diag M)·I, then eigenvectors as columns with eigenvalues ascending.
public func dampedEigenbasis(_ M: Matrix<Double>) throws -> (values: [Double], P: Matrix<Double>) {
    var A = M
    let damp = 0.01 * trace(M) / Double(M.rows)
    for i in 0..<A.rows { A[i, i] += damp }
    let e = try symmetricEigen(A)
    return (e.values, e.vectors)
}

/// `use_pre_fuse_lambda_compensation` (COQUANT_RESQ.md §1.5): CoQuant's objective formed in pre-norm-fusion space,
/// where x = x̂·D and W = W̄·D⁻¹ (D = diag(g), the RMSNorm weight), and its eigenvectors V mapped back to the fused
/// space as the orthonormal Q of D·V = QR (diag R ≥ 0). QR keeps the spans of leading columns, so the low block
/// spans D·V_L and the high block the orthogonal complement, D⁻¹·V_H.
public func preFusionCompensatedBasis(Cx: Matrix<Double>, Cw: Matrix<Double>, normWeight g: [Double],
                                      high r: Int, lowBits: Int = 4) throws -> Matrix<Double> {
    precondition(g.count == Cx.rows && Cx.rows == Cw.rows)
    // |g_j| < 1e-6 becomes ±1e-6 (sign(0) = +), as the reference guards its division.
    let s = g.map { abs($0) < 1e-6 ? ($0 < 0 ? -1e-6 : 1e-6) : $0 }
    var CxPhysical = Cx, CwPhysical = Cw
    let n = Cx.rows
    for i in 0..<n {
        for j in 0..<n {
            CxPhysical[i, j] *= s[i] * s[j]
            CwPhysical[i, j] /= s[i] * s[j]
        }
    }
    var V = try dampedEigenbasis(coquantObjective(Cx: CxPhysical, Cw: CwPhysical, high: r, lowBits: lowBits)).P
    for i in 0..<n { for j in 0..<n { V[i, j] *= s[i] } }
    return try orthogonalFactor(V)
}

/// Second moments of one calibration pass over the norm-fused full-precision model, summed in float64.
public struct SubspaceStatistics {
    public let config: ModelConfiguration
    /// Σ x xᵀ per layer: attention input (q/k/v) and MLP input (gate/up), [d, d].
    public var attention: [Matrix<Double>]
    public var mlp: [Matrix<Double>]
    /// Σ v vᵀ of the v_proj output per KV head (with bias), Σ k kᵀ of the post-RoPE keys per KV head, [hd, hd].
    public var values: [[Matrix<Double>]]
    public var keys: [[Matrix<Double>]]
    /// Σ q qᵀ of the post-RoPE queries, the g heads of a group stacked as extra samples (only for kv-weight-aware).
    public var queries: [[Matrix<Double>]]?
    public var tokens = 0
    /// Evenly spaced tokens of the first window's attention and MLP inputs per layer, [s, d] (empty unless asked
    /// for): the sample on which the report measures the output-error model.
    public var attentionSample: [Matrix<Double>] = []
    public var mlpSample: [Matrix<Double>] = []

    public init(config c: ModelConfiguration, withQueries: Bool) {
        config = c
        let d = c.hiddenSize, hd = c.headDim, L = c.numHiddenLayers, KV = c.numKeyValueHeads
        attention = Array(repeating: Matrix(zeros: d, d), count: L)
        mlp = attention
        values = Array(repeating: Array(repeating: Matrix(zeros: hd, hd), count: KV), count: L)
        keys = values
        queries = withQueries ? values : nil
    }

    /// Runs every window through the model (which must already be norm-fused) layer by layer and accumulates.
    /// Memory: the accumulators and one window's activations.
    public static func collect(_ model: LlamaModel, windows: [[Int]], withQueries: Bool, sampleTokens: Int = 0,
                               progress: (Int) -> Void = { _ in }) -> SubspaceStatistics {
        var stats = SubspaceStatistics(config: model.config, withQueries: withQueries)
        var window = 0
        func sample(_ x: UnsafeMutablePointer<Float>, rows: Int, cols: Int) -> Matrix<Double> {
            let s = min(sampleTokens, rows)
            return Matrix(rows: s, cols: cols, data: (0..<s).flatMap { i in (0..<cols).map { Double(x[(i * rows / s) * cols + $0]) } })
        }
        let saved = model.hook
        defer { model.hook = saved }
        let c = model.config, hd = c.headDim, KV = c.numKeyValueHeads, g = c.numAttentionHeads / KV
        model.hook = { l, site, x, rows, cols in
            switch site {
            case .attentionInput:
                addGram(&stats.attention[l], x, rows: rows, cols: cols, offset: 0, width: cols)
                if window == 0 && sampleTokens > 0 { stats.attentionSample.append(sample(x, rows: rows, cols: cols)) }
            case .mlpInput:
                addGram(&stats.mlp[l], x, rows: rows, cols: cols, offset: 0, width: cols)
                if window == 0 && sampleTokens > 0 { stats.mlpSample.append(sample(x, rows: rows, cols: cols)) }
            case .values:
                for h in 0..<KV { addGram(&stats.values[l][h], x, rows: rows, cols: cols, offset: h * hd, width: hd) }
            case .keys:
                for h in 0..<KV { addGram(&stats.keys[l][h], x, rows: rows, cols: cols, offset: h * hd, width: hd) }
            case .queries where stats.queries != nil:
                for j in 0..<(KV * g) { addGram(&stats.queries![l][j / g], x, rows: rows, cols: cols, offset: j * hd, width: hd) }
            default: break
            }
        }
        for (i, ids) in windows.enumerated() {
            window = i
            var x = model.embed(ids)
            for l in model.layers.indices { model.decoderLayer(l, &x, rows: ids.count, cache: nil) }
            stats.tokens += ids.count
            progress(i + 1)
        }
        return stats
    }
}

// MARK: - The statistics file (`--statistics FILE`)

// The second moments depend only on the norm-fused model and the calibration windows, not on the method (ResQ and
// CoQuant read the same C_x), the granularity (shared pools the per-layer moments) or the solver. Saving them lets
// the runs of a comparison share one statistics pass — an hour of forward passes per run at 128 × 2048 on 2 cores.

/// What the statistics were collected from; a file is reused only when all of it matches.
public struct StatisticsFingerprint: Equatable, Sendable {
    public var windows: String       // FNV-1a of the calibration token ids, window by window
    public var model: String         // FNV-1a (word-wise) of the norm-fused embedding and every layer's linear weights
    public var withQueries: Bool
    public var sampleTokens: Int

    public init(model m: LlamaModel, windows: [[Int]], withQueries: Bool, sampleTokens: Int) {
        var h = FNV1a()
        h.add(UInt64(windows.count))
        for w in windows { h.add(UInt64(w.count)); for t in w { h.add(UInt64(bitPattern: Int64(t))) } }
        self.windows = h.hex
        // Every weight the statistics pass reads: a model that differs only in a deep layer (a fine-tune) must not
        // match. Word-wise, two floats per step, so hashing 0.5 B parameters stays well under a second.
        var g = FNV1a()
        g.addWords(m.embedTokens)
        for layer in m.layers {
            for name in DecoderLayer.linearNames {
                g.addWords(layer[linear: name].weight)
                g.addWords(layer[linear: name].bias ?? [])      // Qwen2's q/k/v biases
            }
        }
        model = g.hex
        self.withQueries = withQueries
        self.sampleTokens = sampleTokens
    }

    var metadata: [String: String] {
        ["windows_fnv1a": windows, "model_fnv1a": model, "with_queries": withQueries ? "1" : "0", "sample_tokens": "\(sampleTokens)"]
    }

    init?(metadata m: [String: String]) {
        guard let w = m["windows_fnv1a"], let model = m["model_fnv1a"], let q = m["with_queries"],
              let s = m["sample_tokens"].flatMap({ Int($0) }) else { return nil }
        windows = w; self.model = model; withQueries = q == "1"; sampleTokens = s
    }

    /// The differences from `other`, for the error message.
    func differences(from other: StatisticsFingerprint) -> [String] {
        var d: [String] = []
        if windows != other.windows { d.append("other calibration windows (seed, nsamples, seqlen or text)") }
        if model != other.model { d.append("another model (or embedding centring)") }
        if withQueries != other.withQueries { d.append(withQueries ? "query moments (--kv-weight-aware)" : "no query moments") }
        if sampleTokens != other.sampleTokens { d.append("\(sampleTokens) error-model sample tokens") }
        return d
    }
}

/// 64-bit FNV-1a: a cheap content fingerprint (not a security hash), written by hand since Foundation has none.
struct FNV1a {
    var value: UInt64 = 0xcbf2_9ce4_8422_2325
    mutating func add(_ x: UInt64) {
        var x = x
        for _ in 0..<8 { value = (value ^ (x & 0xff)) &* 0x0000_0100_0000_01b3; x >>= 8 }
    }
    /// Floats two to a 64-bit word, one multiply per word: FNV-1a's scheme on words instead of bytes. A multiply
    /// only carries changes upwards, so the high half is folded down each step; without that, two sign flips in
    /// the upper float of two words cancelled in bit 63.
    mutating func addWords(_ x: [Float]) {
        var v = value
        x.withUnsafeBufferPointer { p in
            var i = 0
            while i + 1 < p.count {
                v = (v ^ (UInt64(p[i].bitPattern) | UInt64(p[i + 1].bitPattern) << 32)) &* 0x0000_0100_0000_01b3
                v ^= v >> 32
                i += 2
            }
            if i < p.count { v = (v ^ UInt64(p[i].bitPattern)) &* 0x0000_0100_0000_01b3 }
        }
        value = v
        add(UInt64(x.count))
    }
    var hex: String { String(value, radix: 16) }
}

extension SubspaceStatistics {
    public func write(to path: String, fingerprint: StatisticsFingerprint) throws {
        let c = config, d = c.hiddenSize, hd = c.headDim, KV = c.numKeyValueHeads
        var w = SafeTensorsWriter()
        w.metadata = fingerprint.metadata.merging(["format": "coquant-statistics-v1", "tokens": "\(tokens)"]) { a, _ in a }
        for l in attention.indices {
            w.add("layer.\(l).self_attn", attention[l].data, shape: [d, d])
            w.add("layer.\(l).mlp", mlp[l].data, shape: [d, d])
            w.add("layer.\(l).self_attn.value", values[l].flatMap(\.data), shape: [KV, hd, hd])
            w.add("layer.\(l).self_attn.key_pos", keys[l].flatMap(\.data), shape: [KV, hd, hd])
            if let q = queries { w.add("layer.\(l).self_attn.query_pos", q[l].flatMap(\.data), shape: [KV, hd, hd]) }
        }
        for (l, x) in attentionSample.enumerated() { w.add("layer.\(l).self_attn.sample", x.data, shape: [x.rows, d]) }
        for (l, x) in mlpSample.enumerated() { w.add("layer.\(l).mlp.sample", x.data, shape: [x.rows, d]) }
        try w.write(to: path)
    }

    /// Reads a statistics file, refusing one collected from another model, other windows or other options.
    public static func read(_ path: String, config c: ModelConfiguration, fingerprint: StatisticsFingerprint) throws -> SubspaceStatistics {
        let f = try SafeTensorsFile(path: path)
        guard f.metadata["format"] == "coquant-statistics-v1", let found = StatisticsFingerprint(metadata: f.metadata),
              let tokens = f.metadata["tokens"].flatMap({ Int($0) }) else {
            throw ModelFileError(path, "not a CoQuant statistics file (metadata format coquant-statistics-v1)")
        }
        let differences = found.differences(from: fingerprint)
        guard differences.isEmpty else {
            throw ModelFileError(path, "statistics were collected from \(differences.joined(separator: ", ")) than this run uses; remove the file or pass another --statistics path")
        }
        let d = c.hiddenSize
        let t = ShapeCheckedTensors(file: f, path: path, config: c)
        let tensor = t.tensor, heads = t.heads
        func sample(_ name: String) throws -> Matrix<Double>? {
            guard let info = f.tensors[name] else { return nil }
            return Matrix(rows: info.shape.first ?? 0, cols: d, data: try tensor(name, [info.shape.first ?? 0, d]))
        }
        var stats = SubspaceStatistics(config: c, withQueries: fingerprint.withQueries)
        stats.tokens = tokens
        for l in 0..<c.numHiddenLayers {
            stats.attention[l] = Matrix(rows: d, cols: d, data: try tensor("layer.\(l).self_attn", [d, d]))
            stats.mlp[l] = Matrix(rows: d, cols: d, data: try tensor("layer.\(l).mlp", [d, d]))
            stats.values[l] = try heads("layer.\(l).self_attn.value")
            stats.keys[l] = try heads("layer.\(l).self_attn.key_pos")
            if fingerprint.withQueries { stats.queries![l] = try heads("layer.\(l).self_attn.query_pos") }
            if let x = try sample("layer.\(l).self_attn.sample") { stats.attentionSample.append(x) }
            if let x = try sample("layer.\(l).mlp.sample") { stats.mlpSample.append(x) }
        }
        return stats
    }
}

/// Float64 tensors of a bases or statistics file, each checked against the shape this model needs.
struct ShapeCheckedTensors {
    let file: SafeTensorsFile
    let path: String
    let config: ModelConfiguration

    func tensor(_ name: String, _ shape: [Int]) throws -> [Double] {
        guard let info = file.tensors[name] else { throw ModelFileError(path, "missing tensor '\(name)'") }
        guard info.shape == shape else { throw ModelFileError(path, "tensor '\(name)' is \(info.shape), this model needs \(shape)") }
        return try file.doubles(name)
    }

    /// One [hd, hd] matrix per KV head, stored as [KV, hd, hd].
    func heads(_ name: String) throws -> [Matrix<Double>] {
        let hd = config.headDim, KV = config.numKeyValueHeads
        let all = try tensor(name, [KV, hd, hd])
        return (0..<KV).map { Matrix(rows: hd, cols: hd, data: Array(all[($0 * hd * hd)..<(($0 + 1) * hd * hd)])) }
    }
}

/// G += Xᵀ X for the column slice [offset, offset + width) of x [rows, cols]: each core's rows as one float32 ssyrk
/// added into its own float64 partial (`syrkAccumulate`, the Hessians' split, GPTQ_CDQUANT.md §6.1), then summed —
/// still more precise than the reference, whose accumulators are float32 (COQUANT_RESQ.md §1.4). The hooks run
/// inside the forward pass's single-threaded-BLAS scope, so the rows are split over the cores here.
func addGram(_ G: inout Matrix<Double>, _ x: UnsafeMutablePointer<Float>, rows: Int, cols: Int, offset: Int, width: Int) {
    let workers = rows * width * width >= 1 << 22 ? min(forwardWorkers, rows) : 1
    var partials = [Matrix<Double>](repeating: Matrix(zeros: width, width), count: workers)
    partials.withUnsafeMutableBufferPointer { parts in
        parallelFor(workers) { w in
            let r0 = rows * w / workers, r1 = rows * (w + 1) / workers
            var scratch: [Float] = []
            syrkAccumulate(x + r0 * cols + offset, rows: r1 - r0, cols: width, rowStride: cols, alpha: 1,
                           into: &parts[w], scratch: &scratch)
        }
    }
    for p in partials { for i in G.data.indices { G.data[i] += p.data[i] } }
}

/// The bases of one model: eigenvectors P (ascending) and the random in-subspace rotations R. Q = P·R is what
/// gets fused. Per-layer granularity has L attention and L MLP bases; shared has one of each (the same matrix).
public struct SubspaceBases: Sendable {
    public var objective: BasisObjective
    public var granularity: BasisGranularity
    public var high: Int                  // r
    public var headHigh: Int              // r_h
    public var attention: [Matrix<Double>]          // P_attn per layer [d, d]
    public var mlp: [Matrix<Double>]                // P_mlp per layer
    public var values: [[Matrix<Double>]]           // P_v [layer][kv head] [hd, hd]
    public var keys: [[Matrix<Double>]]             // P_k [layer][kv head] (the same matrix for every head when pooled)
    public var keyBasis: KeyBasis
    public var R1: Matrix<Double>                   // blockdiag(R1_1 [d−r], R1_2 [r])
    public var R2: Matrix<Double>                   // blockdiag(R2_1 [hd−r_h], R2_2 [r_h])
    /// Share of each basis's trace (of C_x, before damping) that its top-r subspace captures, per layer:
    /// the report's "energy captured".
    public var attentionEnergy: [Double]
    public var mlpEnergy: [Double]
    /// Attention and MLP bases from the pre-fusion λ compensation (`use_pre_fuse_lambda_compensation`).
    public var preFusionCompensation = false

    /// Q_a^(i) = P_attn^(i)·R1, Q_m^(i) = P_mlp^(i)·R1 (for `shared`, every layer's is the one basis).
    public func attentionRotation(_ l: Int) -> Matrix<Double> { attention[granularity == .shared ? 0 : l] * R1 }
    public func mlpRotation(_ l: Int) -> Matrix<Double> { mlp[granularity == .shared ? 0 : l] * R1 }
    public func valueRotation(_ l: Int, head h: Int) -> Matrix<Double> { values[l][h] * R2 }
    public func keyRotation(_ l: Int, head h: Int) -> Matrix<Double> { keys[l][h] * R2 }
}

public struct SubspaceError: Error, CustomStringConvertible {
    public let description: String
}

/// Sizes of the high subspaces: r = ⌊f·d⌋, r_h = ⌊f·hd⌋ (the reference truncates), both required to be ≥ 1.
public func highChannels(fraction f: Double, config c: ModelConfiguration) throws -> (r: Int, rh: Int) {
    guard f > 0 && f < 1 else { throw SubspaceError(description: "--high-fraction \(f) must be in (0, 1)") }
    let r = Int(f * Double(c.hiddenSize)), rh = Int(f * Double(c.headDim))
    guard r >= 1 && rh >= 1 else {
        throw SubspaceError(description: "--high-fraction \(f) gives \(r) high hidden channels and \(rh) per head (head_dim \(c.headDim)); both must be ≥ 1")
    }
    return (r, rh)
}

/// Builds the bases from the statistics (COQUANT_RESQ.md §1.4, §2.6). `model` must be norm-fused (C_w uses the
/// fused weights W̄ = W·diag(g)). R1, R2 are drawn from `seed` in the reference's order (R1_1, R1_2, R2_1, R2_2).
///
/// `preFusionNorms` (per layer: input_layernorm and post_attention_layernorm weights before fusion) turns on the
/// pre-fusion λ compensation of the attention and MLP bases; CoQuant per-layer only, as in the reference.
public func buildBases(_ stats: SubspaceStatistics, model: LlamaModel, objective: BasisObjective,
                       granularity: BasisGranularity, keyBasis: KeyBasis? = nil, highFraction: Double, kvWeightAware: Bool,
                       preFusionNorms: [(attention: [Double], mlp: [Double])]? = nil,
                       seed: UInt64) throws -> SubspaceBases {
    let c = model.config, d = c.hiddenSize, hd = c.headDim, L = c.numHiddenLayers, KV = c.numKeyValueHeads
    let (r, rh) = try highChannels(fraction: highFraction, config: c)
    let keyBasis = keyBasis ?? .reference(for: granularity)
    if preFusionNorms != nil {
        guard objective == .weightActivation, granularity == .perLayer else {
            throw SubspaceError(description: "the pre-fusion λ compensation applies to CoQuant's per-layer bases only (method coquant, granularity per-layer)")
        }
        guard preFusionNorms!.count == L, preFusionNorms!.allSatisfy({ $0.attention.count == d && $0.mlp.count == d }) else {
            throw SubspaceError(description: "pre-fusion norm weights: need \(L) layers of two [\(d)] vectors")
        }
    }
    guard stats.tokens >= d else {
        throw SubspaceError(description: "the statistics saw \(stats.tokens) calibration tokens, fewer than the hidden size \(d): C_x would be rank-deficient")
    }
    let N = Double(stats.tokens)
    func scaled(_ A: Matrix<Double>, _ s: Double) -> Matrix<Double> { var B = A; for i in B.data.indices { B.data[i] *= s }; return B }
    func gram(_ linears: [Linear]) -> Matrix<Double> {
        var G = Matrix<Double>(zeros: d, d)
        for lin in linears { syrkAccumulate(Matrix(rows: lin.outFeatures, cols: lin.inFeatures, data: lin.weight.map(Double.init)), into: &G) }
        return G
    }
    func objectiveMatrix(_ Cx: Matrix<Double>, _ consumers: [Linear]) -> Matrix<Double> {
        objective == .activation ? Cx : coquantObjective(Cx: Cx, Cw: gram(consumers), high: r)
    }
    func topEnergy(_ P: Matrix<Double>, _ Cx: Matrix<Double>, _ k: Int) -> Double {
        // tr(P_Hᵀ C_x P_H) / tr(C_x)
        let PH = Matrix(rows: P.rows, cols: k, data: (0..<P.rows).flatMap { i in (P.cols - k..<P.cols).map { P[i, $0] } })
        let CP = Cx * PH
        var s = 0.0
        for i in 0..<P.rows { for j in 0..<k { s += PH[i, j] * CP[i, j] } }
        return s / trace(Cx)
    }

    var attention: [Matrix<Double>] = [], mlp: [Matrix<Double>] = []
    var attentionEnergy: [Double] = [], mlpEnergy: [Double] = []
    switch granularity {
    case .perLayer:
        for l in 0..<L {
            let a = model.layers[l].selfAttn, m = model.layers[l].mlp
            let Ca = scaled(stats.attention[l], 1 / N), Cm = scaled(stats.mlp[l], 1 / N)
            let Pa: Matrix<Double>, Pm: Matrix<Double>
            if let g = preFusionNorms?[l] {
                Pa = try preFusionCompensatedBasis(Cx: Ca, Cw: gram([a.qProj, a.kProj, a.vProj]), normWeight: g.attention, high: r)
                Pm = try preFusionCompensatedBasis(Cx: Cm, Cw: gram([m.gateProj, m.upProj]), normWeight: g.mlp, high: r)
            } else {
                Pa = try dampedEigenbasis(objectiveMatrix(Ca, [a.qProj, a.kProj, a.vProj])).P
                Pm = try dampedEigenbasis(objectiveMatrix(Cm, [m.gateProj, m.upProj])).P
            }
            attention.append(Pa); mlp.append(Pm)
            attentionEnergy.append(topEnergy(Pa, Ca, r)); mlpEnergy.append(topEnergy(Pm, Cm, r))
        }
    case .shared:
        // ResQ: one U_A from (1/2NL) Σ_i (H_attn[i] + H_mlp[i]). CoQuant shared (our extension, the reference has
        // no shared wa_cov): the same pooling of the per-input objectives, each trace-normalised as §1.3 shows M is.
        var pooled = Matrix<Double>(zeros: d, d)
        for l in 0..<L {
            let a = model.layers[l].selfAttn, m = model.layers[l].mlp
            let Ca = scaled(stats.attention[l], 1 / N), Cm = scaled(stats.mlp[l], 1 / N)
            for (Cx, consumers) in [(Ca, [a.qProj, a.kProj, a.vProj]), (Cm, [m.gateProj, m.upProj])] {
                let M = objective == .activation ? Cx : objectiveMatrix(Cx, consumers)
                let s = objective == .activation ? 1 / Double(2 * L) : 1 / trace(M)
                for i in pooled.data.indices { pooled.data[i] += s * M.data[i] }
            }
        }
        let P = try dampedEigenbasis(pooled).P
        attention = [P]; mlp = [P]
        for l in 0..<L {
            attentionEnergy.append(topEnergy(P, scaled(stats.attention[l], 1 / N), r))
            mlpEnergy.append(topEnergy(P, scaled(stats.mlp[l], 1 / N), r))
        }
    }

    // Per-head bases: activation-only unless kvWeightAware (the reference's default is off).
    let g = c.numAttentionHeads / KV
    var values: [[Matrix<Double>]] = [], keys: [[Matrix<Double>]] = []
    for l in 0..<L {
        var vl: [Matrix<Double>] = [], kl: [Matrix<Double>] = []
        let o = model.layers[l].selfAttn.oProj
        for h in 0..<KV {
            let Cv = scaled(stats.values[l][h], 1 / N)
            var Mv = Cv
            if kvWeightAware {
                // o_proj columns of the g query heads that read value head h.
                var Cw = Matrix<Double>(zeros: hd, hd)
                for j in (h * g)..<((h + 1) * g) {
                    let cols = Matrix(rows: o.outFeatures, cols: hd, data: (0..<o.outFeatures).flatMap { row in
                        (0..<hd).map { Double(o.weight[row * o.inFeatures + j * hd + $0]) } })
                    syrkAccumulate(cols, into: &Cw)
                }
                Mv = coquantObjective(Cx: Cv, Cw: Cw, high: rh)
            }
            vl.append(try dampedEigenbasis(Mv).P)
            if keyBasis == .perHead {
                let Ck = scaled(stats.keys[l][h], 1 / N)
                let Mk = kvWeightAware ? coquantObjective(Cx: Ck, Cw: scaled(stats.queries![l][h], 1 / N), high: rh) : Ck
                kl.append(try dampedEigenbasis(Mk).P)
            }
        }
        if keyBasis == .pooled {
            // ResQ's U_C: one key basis per layer shared by its heads, from Σ_h H_key_pos[i, h]/(KV·N) (activation-only,
            // as the reference, even with kvWeightAware).
            var Ck = Matrix<Double>(zeros: hd, hd)
            for h in 0..<KV { for i in Ck.data.indices { Ck.data[i] += stats.keys[l][h].data[i] / (Double(KV) * N) } }
            let P = try dampedEigenbasis(Ck).P
            kl = Array(repeating: P, count: KV)
        }
        values.append(vl); keys.append(kl)
    }

    var rng = SeededGenerator(seed: seed)
    let R1 = blockDiagonal(randomOrthogonalMatrix(d - r, generator: &rng), randomOrthogonalMatrix(r, generator: &rng))
    let R2 = blockDiagonal(randomOrthogonalMatrix(hd - rh, generator: &rng), randomOrthogonalMatrix(rh, generator: &rng))
    return SubspaceBases(objective: objective, granularity: granularity, high: r, headHigh: rh, attention: attention,
                         mlp: mlp, values: values, keys: keys, keyBasis: keyBasis, R1: R1, R2: R2,
                         attentionEnergy: attentionEnergy, mlpEnergy: mlpEnergy,
                         preFusionCompensation: preFusionNorms != nil)
}

func blockDiagonal(_ A: Matrix<Double>, _ B: Matrix<Double>) -> Matrix<Double> {
    let n = A.rows + B.rows
    var M = Matrix<Double>(zeros: n, n)
    for i in 0..<A.rows { for j in 0..<A.cols { M[i, j] = A[i, j] } }
    for i in 0..<B.rows { for j in 0..<B.cols { M[A.rows + i, A.cols + j] = B[i, j] } }
    return M
}

// MARK: - The bases file (`--bases FILE`)

// A run's bases in float64 safetensors, keyed as the reference's `U-*.bin` (`layer.{i}.self_attn`, `layer.{i}.mlp`,
// `layer.{i}.self_attn.value`, `layer.{i}.self_attn.key_pos`) plus its `R-*.bin` (`R1`, `R2`), so a second run with
// another solver skips the statistics pass and the eigendecompositions, and uses the same random rotations.

extension SubspaceBases {
    public func write(to path: String, config c: ModelConfiguration) throws {
        let d = c.hiddenSize, hd = c.headDim, KV = c.numKeyValueHeads
        var w = SafeTensorsWriter()
        w.metadata = ["format": "coquant-bases-v1", "objective": objective.rawValue, "granularity": granularity.rawValue,
                      "key_basis": keyBasis.rawValue, "high": "\(high)", "head_high": "\(headHigh)",
                      "pre_fuse_lambda_compensation": preFusionCompensation ? "1" : "0",
                      "attention_energy": attentionEnergy.map { "\($0)" }.joined(separator: ","),
                      "mlp_energy": mlpEnergy.map { "\($0)" }.joined(separator: ",")]
        for (l, P) in attention.enumerated() { w.add("layer.\(l).self_attn", P.data, shape: [d, d]) }
        for (l, P) in mlp.enumerated() { w.add("layer.\(l).mlp", P.data, shape: [d, d]) }
        for l in values.indices {
            w.add("layer.\(l).self_attn.value", values[l].flatMap(\.data), shape: [KV, hd, hd])
            w.add("layer.\(l).self_attn.key_pos", keys[l].flatMap(\.data), shape: [KV, hd, hd])
        }
        w.add("R1", R1.data, shape: [d, d])
        w.add("R2", R2.data, shape: [hd, hd])
        try w.write(to: path)
    }

    /// Reads a bases file written for a model of this configuration, checking every shape.
    public static func read(_ path: String, config c: ModelConfiguration) throws -> SubspaceBases {
        let f = try SafeTensorsFile(path: path)
        let m = f.metadata
        guard m["format"] == "coquant-bases-v1", let objective = m["objective"].flatMap(BasisObjective.init(rawValue:)),
              let granularity = m["granularity"].flatMap(BasisGranularity.init(rawValue:)),
              let high = m["high"].flatMap({ Int($0) }), let headHigh = m["head_high"].flatMap({ Int($0) }) else {
            throw ModelFileError(path, "not a CoQuant bases file (metadata format coquant-bases-v1 with objective, granularity, high, head_high)")
        }
        // Files written before key_basis existed used the reference's choice for their granularity.
        guard let keyBasis = m["key_basis"].map(KeyBasis.init(rawValue:)) ?? .reference(for: granularity) else {
            throw ModelFileError(path, "unknown key_basis \(m["key_basis"]!) (per-head or pooled)")
        }
        let d = c.hiddenSize, hd = c.headDim, L = c.numHiddenLayers
        let t = ShapeCheckedTensors(file: f, path: path, config: c)
        let tensor = t.tensor, heads = t.heads
        let count = granularity == .shared ? 1 : L
        let energies = { (key: String) in (m[key] ?? "").split(separator: ",").compactMap { Double($0) } }
        return SubspaceBases(
            objective: objective, granularity: granularity, high: high, headHigh: headHigh,
            attention: try (0..<count).map { Matrix(rows: d, cols: d, data: try tensor("layer.\($0).self_attn", [d, d])) },
            mlp: try (0..<count).map { Matrix(rows: d, cols: d, data: try tensor("layer.\($0).mlp", [d, d])) },
            values: try (0..<L).map { try heads("layer.\($0).self_attn.value") },
            keys: try (0..<L).map { try heads("layer.\($0).self_attn.key_pos") }, keyBasis: keyBasis,
            R1: Matrix(rows: d, cols: d, data: try tensor("R1", [d, d])),
            R2: Matrix(rows: hd, cols: hd, data: try tensor("R2", [hd, hd])),
            attentionEnergy: energies("attention_energy"), mlpEnergy: energies("mlp_energy"),
            preFusionCompensation: m["pre_fuse_lambda_compensation"] == "1")
    }
}
