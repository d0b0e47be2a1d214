import CoQuantModel
import CoQuantTensor

// Fusing ResQ/CoQuant bases into the model and what stays online (COQUANT_RESQ.md §2.2–§2.5).
//
// Shapes: d hidden, hd head_dim, F intermediate, Q_a^(i), Q_m^(i) [d, d] the attention- and MLP-input rotations
// of layer i (P·R1), Q_v^(i,h), Q_k^(i,h) [hd, hd] per KV head (P·R2). A residual stream in basis Q is h·Q:
// readers take W·Q (input side), writers Qᵀ·W (output side).
//
//   embed_tokens        E ← E·Q_a^(0)
//   q/k/v_proj          W ← W·Q_a^(i);   v rows of head h ← Q_vᵀ·W_v[h] (and bias)
//   o_proj              columns of query head j ← W_o[:, j]·Q_v^(⌊j/g⌋);  output ← Q_m^(i)ᵀ·W_o
//   gate/up_proj        W ← W·Q_m^(i)
//   down_proj           input ← W_d·M_Fᵀ (online Hadamard of its input);  output ← Q_a^(i+1)ᵀ·W_d
//   basis_change_1/2    B1 = Q_m^(i)ᵀ·Q_a^(i),  B2 = Q_a^(i+1)ᵀ·Q_m^(i)       (per-layer granularity only)
//   lm_head             W ← W·Q_a^(L), Q_a^(L) = R1 (per-layer) or the shared basis
//   online              q_j ← q_j·Q_k^(⌊j/g⌋), k_h ← k_h·Q_k^(h) after RoPE (q·kᵀ unchanged); Hadamard before down_proj
//
// With `shared` granularity Q_a = Q_m for every layer, so B1 = B2 = I and no basis change is added.

/// What a subspace-fused model computes online: the down_proj Hadamard, the key/query rotations, and the sizes of
/// the high subspaces the activation quantizers need.
public struct SubspaceOnline: Sendable {
    public let downProj: HadamardTransform
    /// Q_k per layer and KV head [hd, hd] row-major, as the forward pass multiplies by it (Float32).
    public var keyRotations: [[[Float]]]
    public let high: Int
    public let headHigh: Int

    public init(config c: ModelConfiguration, keyRotations: [[[Float]]], high: Int, headHigh: Int) {
        downProj = HadamardTransform(size: c.intermediateSize)
        self.keyRotations = keyRotations
        self.high = high
        self.headHigh = headHigh
    }

    public var notes: [String] {
        downProj.construction.isHadamard ? []
            : ["no Hadamard matrix of size \(downProj.size) is known here: using \(downProj.construction) instead"]
    }

    /// The reference quantizes the key rotation to INT8, symmetric per tensor over all of a layer's heads
    /// (s = max|·|/127, codes in [−128, 127]), when the KV cache is quantized (COQUANT_RESQ.md §3.3); the
    /// quantized matrix is only approximately orthogonal.
    public mutating func quantizeKeyRotationsToInt8() {
        for l in keyRotations.indices {
            let m = keyRotations[l].flatMap { $0 }.reduce(Float(0)) { max($0, abs($1)) }
            guard m > 0 else { continue }
            let s = m / 127
            keyRotations[l] = keyRotations[l].map { q in q.map { s * min(max(($0 / s).rounded(.toNearestOrEven), -128), 127) } }
        }
    }
}

/// Fuses the bases into a model (norms first, with the reference's embedding centring unless turned off).
/// At full precision, with `centerEmbeddings: false`, the model computes the same function.
public func fuseSubspaceBases(_ model: LlamaModel, _ bases: SubspaceBases, centerEmbeddings: Bool,
                              normsFused: Bool = false) -> SubspaceOnline {
    let c = model.config, d = c.hiddenSize, L = c.numHiddenLayers, KV = c.numKeyValueHeads
    if !normsFused { fuseNorms(model, centerEmbeddings: centerEmbeddings) }
    let online = SubspaceOnline(
        config: c,
        keyRotations: (0..<L).map { l in (0..<KV).map { h in bases.keyRotation(l, head: h).data.map { Float($0) } } },
        high: bases.high, headHigh: bases.headHigh)

    let Qa: [Matrix<Double>], Qm: [Matrix<Double>]
    switch bases.granularity {
    case .shared:
        let Q = bases.attentionRotation(0)      // every Q_a = Q_m: a plain rotation of the stream
        Qa = Array(repeating: Q, count: L + 1)
        Qm = Array(repeating: Q, count: L)
    case .perLayer:
        Qa = (0..<L).map { bases.attentionRotation($0) } + [bases.R1]      // after the last layer: basis R1
        Qm = (0..<L).map { bases.mlpRotation($0) }
    }
    rotateResidual(model, attention: Qa, mlp: Qm)
    if bases.granularity == .perLayer {
        for i in 0..<L {
            model.layers[i].basisChange1 = Linear(weight: matmul(Qm[i], transA: true, Qa[i]).data.map { Float($0) }, inFeatures: d, outFeatures: d)
            model.layers[i].basisChange2 = Linear(weight: matmul(Qa[i + 1], transA: true, Qm[i]).data.map { Float($0) }, inFeatures: d, outFeatures: d)
        }
    }
    for i in 0..<L {
        rotateValueHeads(model, layer: i, (0..<KV).map { bases.valueRotation(i, head: $0) })
        var down = model.layers[i].mlp.downProj
        down.weight.withUnsafeMutableBufferPointer { online.downProj.apply($0.baseAddress!, rows: down.outFeatures) }
        model.layers[i].mlp.downProj = down
    }
    return online
}

/// The activation and KV quantizers of the mixed-precision scheme (COQUANT_RESQ.md §3.2–§3.3): the last r channels
/// (r_h per head) at `highBits`, the rest at the scheme's bits, each block with its own scale. nil: not quantized.
public struct SubspaceQuantizers: Sendable {
    public var activationLow: ActivationQuantizer?        // per token, 0 in range: q/k/v, gate/up, down_proj inputs
    public var activationHigh: ActivationQuantizer?
    public var headLow: ActivationQuantizer?               // per (token, head), plain min/max: o_proj input, V
    public var headHigh: ActivationQuantizer?
    public var kvLow: ActivationQuantizer?                 // V cache (group-wise rule)
    public var kvHigh: ActivationQuantizer?
    public var keyLow: ActivationQuantizer?                // K cache: per (token, head) with 0 in range
    public var keyHigh: ActivationQuantizer?
    public var int8: ActivationQuantizer?                  // q, k before the key rotation (with a quantized KV cache)
    public var residual: ActivationQuantizer?              // per-layer basis-change inputs (the residual stream)
    public var downProj: ActivationQuantizer?              // down_proj input (after its Hadamard), uniform

    /// `residualBits`: the basis-change inputs' width, 8 as the reference (§2.4); 16 leaves them unquantized.
    public init(activationBits: Int, kvBits: Int, highBits: Int = 8, residualBits: Int = 8,
                activationClipRatio: Float = 1, kvClipRatio: Float = 1) throws {
        if activationBits < 16 {
            activationLow = try ActivationQuantizer(bits: activationBits, clipRatio: activationClipRatio)
            activationHigh = try ActivationQuantizer(bits: highBits, clipRatio: activationClipRatio)
            headLow = try ActivationQuantizer(bits: activationBits, clipRatio: activationClipRatio, rangeRule: .minMax)
            headHigh = try ActivationQuantizer(bits: highBits, clipRatio: activationClipRatio, rangeRule: .minMax)
            downProj = activationLow
        }
        if kvBits < 16 {
            kvLow = try ActivationQuantizer(bits: kvBits, clipRatio: kvClipRatio, rangeRule: .minMax)
            kvHigh = try ActivationQuantizer(bits: highBits, clipRatio: kvClipRatio, rangeRule: .minMax)
            keyLow = try ActivationQuantizer(bits: kvBits, clipRatio: kvClipRatio)
            keyHigh = try ActivationQuantizer(bits: highBits, clipRatio: kvClipRatio)
        }
        if kvBits < 16 { int8 = try ActivationQuantizer(bits: 8) }
        if (activationBits < 16 || kvBits < 16) && residualBits < 16 { residual = try ActivationQuantizer(bits: residualBits) }
    }
}

/// Installs the online operations (always: they are part of the fused function) and, where given, the fake
/// quantizers, as the forward hook.
public func installSubspaceHooks(_ model: LlamaModel, online: SubspaceOnline, quantizers q: SubspaceQuantizers?) {
    let c = model.config, hd = c.headDim, H = c.numAttentionHeads, KV = c.numKeyValueHeads, g = H / KV
    let rh = online.headHigh, r = online.high, d = c.hiddenSize
    let lowH = hd - rh
    /// Mixed blocks of a [rows, cols] buffer: columns [0, split) on `low`, [split, cols) on `high`, each per row.
    func mixed(_ x: UnsafeMutablePointer<Float>, rows: Int, cols: Int, split: Int, _ low: ActivationQuantizer?, _ high: ActivationQuantizer?) {
        try? low?.apply(x, rows: rows, cols: split, rowStride: cols)
        try? high?.apply(x + split, rows: rows, cols: cols - split, rowStride: cols)
    }
    /// x_j ← x_j·Q for each head j of x [rows, heads·hd], Q = rotations[head(j)].
    func rotateHeads(_ x: UnsafeMutablePointer<Float>, rows: Int, heads: Int, _ rotations: [[Float]], headOf: (Int) -> Int) {
        let tmp = UnsafeMutablePointer<Float>.allocate(capacity: rows * hd)
        defer { tmp.deallocate() }
        for j in 0..<heads {
            rotations[headOf(j)].withUnsafeBufferPointer { Q in
                Float.gemm(false, false, rows, hd, hd, 1, x + j * hd, heads * hd, Q.baseAddress!, hd, 0, tmp, hd)
            }
            for t in 0..<rows { (x + t * heads * hd + j * hd).update(from: tmp + t * hd, count: hd) }
        }
    }
    model.hook = { l, site, x, rows, cols in
        switch site {
        case .attentionInput, .mlpInput:
            mixed(x, rows: rows, cols: cols, split: d - r, q?.activationLow, q?.activationHigh)
        case .oProjInput:
            // Per (token, head): the head's first hd − r_h channels low, its last r_h high, plain min/max ranges.
            mixed(x, rows: rows * H, cols: hd, split: lowH, q?.headLow, q?.headHigh)
        case .downProjInput:
            online.downProj.apply(x, rows: rows)
            try? q?.downProj?.apply(x, rows: rows, cols: cols)
        case .basisChangeInput:
            try? q?.residual?.apply(x, rows: rows, cols: cols)
        case .queries:
            try? q?.int8?.apply(x, rows: rows * H, cols: hd)
            rotateHeads(x, rows: rows, heads: H, online.keyRotations[l]) { $0 / g }
        case .keys:
            try? q?.int8?.apply(x, rows: rows * KV, cols: hd)
            rotateHeads(x, rows: rows, heads: KV, online.keyRotations[l]) { $0 }
            mixed(x, rows: rows * KV, cols: hd, split: lowH, q?.keyLow, q?.keyHigh)
        case .values:
            mixed(x, rows: rows * KV, cols: hd, split: lowH, q?.kvLow, q?.kvHigh)
        case .lmHeadInput:
            break
        }
    }
}
