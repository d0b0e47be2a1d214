import CoQuantTensor
import Foundation

// The Llama / Qwen2 decoder in fp32 over OpenBLAS. Qwen2 is Llama with q/k/v biases, so one set of types serves
// both; names mirror the checkpoint's (`q_proj` → `qProj`, `input_layernorm` → `inputLayernorm`).
//
// Shapes (T tokens, d hidden, H heads, KV key/value heads, hd head_dim, F intermediate, V vocab):
//   x [T, d] → inputLayernorm → q [T, H·hd], k/v [T, KV·hd] → RoPE(q, k) → attention → context [T, H·hd]
//   → oProj [T, d] (+ residual) → postAttentionLayernorm → gate/up [T, F] → down [T, d] (+ residual)
//   → norm → lmHead [T, V]

/// A weight matrix [out, in] held in another form than fp32 rows: the Runtime's packed low-bit weights and integer
/// kernels implement it, so the forward pass runs them without knowing how they are stored.
public protocol LinearKernel: AnyObject, Sendable {
    /// y[T, out] = x[T, in] · Ŵᵀ, no bias.
    func apply(_ x: UnsafePointer<Float>, rows: Int, into y: UnsafeMutablePointer<Float>)
    /// ys[0] for this kernel and ys[i] for others[i − 1], all over the same x, in one parallel loop (q/k/v and
    /// gate/up while decoding: one barrier for the group instead of one per linear). false: not done, run them one
    /// by one.
    func apply(fusedWith others: [any LinearKernel], _ x: UnsafePointer<Float>, rows: Int, into ys: [UnsafeMutablePointer<Float>]) -> Bool
}

extension LinearKernel {
    public func apply(fusedWith others: [any LinearKernel], _ x: UnsafePointer<Float>, rows: Int, into ys: [UnsafeMutablePointer<Float>]) -> Bool {
        false
    }
}

/// A LinearKernel whose rows can be read back one at a time: a packed embedding table, which a tied LM head shares.
public protocol RowTableKernel: LinearKernel {
    /// Ŵ[row, 0..<in] in fp32.
    func row(_ r: Int, into out: UnsafeMutablePointer<Float>)
}

/// `y = x Wᵀ + b` with W stored [out, in] row-major, as checkpoints store it, or held by a `kernel` (then `weight`
/// is empty).
public struct Linear: Sendable {
    public var weight: [Float]
    public var bias: [Float]?
    public let inFeatures: Int
    public let outFeatures: Int
    public var kernel: (any LinearKernel)?

    public init(weight: [Float], bias: [Float]? = nil, inFeatures: Int, outFeatures: Int) {
        precondition(weight.count == inFeatures * outFeatures)
        self.weight = weight
        self.bias = bias
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
    }

    public init(kernel: any LinearKernel, bias: [Float]? = nil, inFeatures: Int, outFeatures: Int) {
        weight = []
        self.kernel = kernel
        self.bias = bias
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
    }

    /// ys[i] = linears[i](x): one parallel loop where their kernels can share it (LinearKernel.apply(fusedWith:)).
    public static func apply(_ linears: [Linear], _ x: UnsafePointer<Float>, rows: Int, into ys: [UnsafeMutablePointer<Float>]) {
        let kernels = linears.compactMap(\.kernel)
        if kernels.count == linears.count, kernels[0].apply(fusedWith: Array(kernels.dropFirst()), x, rows: rows, into: ys) {
            for (l, y) in zip(linears, ys) { l.addBias(y, rows: rows) }
            return
        }
        for (l, y) in zip(linears, ys) { l(x, rows: rows, into: y) }
    }

    /// y[T, out] = x[T, in] · Wᵀ (+ b).
    public func callAsFunction(_ x: UnsafePointer<Float>, rows: Int, into y: UnsafeMutablePointer<Float>) {
        if let kernel {
            kernel.apply(x, rows: rows, into: y)
        } else {
            weight.withUnsafeBufferPointer { w in
                parallelSgemm(transB: true, rows, outFeatures, inFeatures, 1, x, inFeatures, w.baseAddress!, inFeatures, y, outFeatures)
            }
        }
        addBias(y, rows: rows)
    }

    func addBias(_ y: UnsafeMutablePointer<Float>, rows: Int) {
        if let bias {
            for t in 0..<rows { for j in 0..<outFeatures { y[t * outFeatures + j] += bias[j] } }
        }
    }
}

public struct Attention: Sendable {
    public var qProj: Linear
    public var kProj: Linear
    public var vProj: Linear
    public var oProj: Linear
}

public struct MLP: Sendable {
    public var gateProj: Linear
    public var upProj: Linear
    public var downProj: Linear
}

public struct DecoderLayer: Sendable {
    public var inputLayernorm: [Float]
    public var selfAttn: Attention
    public var postAttentionLayernorm: [Float]
    public var mlp: MLP
    /// ResQ/CoQuant per-layer bases only (COQUANT_RESQ.md §2.4): the residual stream changes basis online before
    /// each sub-block output is added, x ← x·B1ᵀ before o_proj's output, x ← x·B2ᵀ before down_proj's.
    /// Names mirror the reference's `basis_change_1` / `basis_change_2` modules. nil in a plain checkpoint.
    public var basisChange1: Linear?
    public var basisChange2: Linear?

    public init(inputLayernorm: [Float], selfAttn: Attention, postAttentionLayernorm: [Float], mlp: MLP,
                basisChange1: Linear? = nil, basisChange2: Linear? = nil) {
        self.inputLayernorm = inputLayernorm
        self.selfAttn = selfAttn
        self.postAttentionLayernorm = postAttentionLayernorm
        self.mlp = mlp
        self.basisChange1 = basisChange1
        self.basisChange2 = basisChange2
    }
}

/// Where the forward pass offers its tensors to a hook (the seam between Model and Quant). The hook may read them
/// (calibration statistics) or rewrite them in place (fake quantization).
public enum HookSite: String, Sendable, CaseIterable {
    case attentionInput     // input of q_proj, k_proj, v_proj: [T, d]
    case oProjInput         // attention context, input of o_proj: [T, H·hd]
    case mlpInput           // input of gate_proj, up_proj: [T, d]
    case downProjInput      // SwiGLU product, input of down_proj: [T, F]
    case queries            // post-RoPE queries: [T, H·hd]
    case keys               // post-RoPE keys of the new tokens, before they enter the cache: [T, KV·hd]
    case values             // values of the new tokens, before they enter the cache: [T, KV·hd]
    case lmHeadInput        // final-norm output: [T, d] (layer index = numHiddenLayers)
    case basisChangeInput   // residual stream entering basis_change_1 or _2 (layers that have them): [T, d]
}

/// `hook(layer, site, x, rows, cols)`; x is row-major [rows, cols] and may be modified.
public typealias ForwardHook = (_ layer: Int, _ site: HookSite, _ x: UnsafeMutablePointer<Float>, _ rows: Int, _ cols: Int) -> Void

/// Which positions get logits: all, the last, or the given rows (zero-shot scoring needs only the rows that predict
/// continuation tokens, and the LM head over every row would cost as much as a few decoder layers).
public enum LogitsRows: Sendable, Equatable { case all, last, rows([Int]) }

/// Several sequences packed into one forward pass, so that short sequences (zero-shot requests of a few dozen
/// tokens) still give the GEMMs enough rows: at 20 rows a linear layer runs several times slower per row than at
/// 1000. Segment i owns the packed rows `rows`; a segment with a `prefix` continues that earlier segment — its
/// positions start after the prefix's and its queries also see the prefix's keys and values — as if it ran from a
/// KV cache holding the prefix, so the continuations of one context share the context's rows. Only RoPE and
/// attention see segments; everything else in a decoder layer is row-wise.
public struct PackedSequences: Sendable, Equatable {
    public struct Segment: Sendable, Equatable {
        public let rows: Range<Int>
        public let prefix: Int?
        /// Position of the segment's first row (the prefix's length, 0 without one).
        public let start: Int
    }
    public private(set) var segments: [Segment] = []
    public var rowCount: Int { segments.last?.rows.upperBound ?? 0 }
    /// Positions the longest segment reaches, its prefix included (RoPE tables and key buffers are this long).
    public var positions: Int { segments.map { $0.start + $0.rows.count }.max() ?? 0 }

    public init() {}

    /// Appends a segment of `count` rows (after every row so far) and returns its index. `prefix` is an earlier
    /// segment without a prefix of its own.
    @discardableResult
    public mutating func append(rows count: Int, prefix: Int? = nil) -> Int {
        precondition(count > 0, "a packed segment needs at least one row")
        var start = 0
        if let prefix {
            precondition(prefix < segments.count && segments[prefix].prefix == nil,
                         "segment \(prefix) cannot be a prefix: it does not exist or continues another segment")
            start = segments[prefix].rows.count
        }
        segments.append(Segment(rows: rowCount..<(rowCount + count), prefix: prefix, start: start))
        return segments.count - 1
    }
}

public final class LlamaModel: @unchecked Sendable {
    public let config: ModelConfiguration
    public var embedTokens: [Float]             // [V, d]
    public var layers: [DecoderLayer]
    public var norm: [Float]
    public var lmHead: Linear?                  // nil when tied to embedTokens
    /// The embedding table in packed form (then `embedTokens` is empty); a tied LM head multiplies by it too.
    public var embeddingKernel: (any RowTableKernel)?
    public var hook: ForwardHook?
    /// A quantized model's KV cache (the Runtime's): keys and values are rounded to it after the hooks have seen them,
    /// and `makeCache` stores them packed at its bits. nil: fp32 (or fake-quantized by the hook, in the simulator).
    public var kvCacheFormat: KVCacheFormat?

    /// A cache for `capacity` positions in this model's KV format.
    public func makeCache(capacity: Int) -> KVCache {
        KVCache(config: config, capacity: capacity, format: kvCacheFormat)
    }

    // RoPE tables [position, hd/2], grown on demand.
    private(set) var ropeCos: [Float] = []
    private(set) var ropeSin: [Float] = []
    private var ropePositions = 0
    public let invFreq: [Double]

    public init(config: ModelConfiguration, embedTokens: [Float], layers: [DecoderLayer], norm: [Float], lmHead: Linear?) {
        self.config = config
        self.embedTokens = embedTokens
        self.layers = layers
        self.norm = norm
        self.lmHead = lmHead
        invFreq = Self.ropeInverseFrequencies(config)
    }

    /// `1/θ^(2i/hd)`, then Meta's llama3 rule when configured: long wavelengths divided by `factor`, short ones kept,
    /// a linear blend in between. Computed in float64 (HF's float32 tables drift at large positions).
    public static func ropeInverseFrequencies(_ c: ModelConfiguration) -> [Double] {
        let hd = c.headDim
        var inv = (0..<(hd / 2)).map { 1 / pow(c.ropeTheta, Double(2 * $0) / Double(hd)) }
        if let s = c.ropeScaling, s.ropeType == "llama3" {
            let factor = s.factor ?? 8, low = s.lowFreqFactor ?? 1, high = s.highFreqFactor ?? 4
            let old = Double(s.originalMaxPositionEmbeddings ?? 8192)
            let lowWavelen = old / low, highWavelen = old / high
            inv = inv.map { f in
                let wavelen = 2 * Double.pi / f
                if wavelen < highWavelen { return f }
                if wavelen > lowWavelen { return f / factor }
                let smooth = (old / wavelen - low) / (high - low)
                return (1 - smooth) * f / factor + smooth * f
            }
        }
        return inv
    }

    func ensureRope(_ positions: Int) {
        guard positions > ropePositions else { return }
        let half = config.headDim / 2
        let n = max(positions, 2 * ropePositions)
        ropeCos = [Float](repeating: 0, count: n * half)
        ropeSin = ropeCos
        for p in 0..<n {
            for i in 0..<half {
                let a = Double(p) * invFreq[i]
                ropeCos[p * half + i] = Float(cos(a))
                ropeSin[p * half + i] = Float(sin(a))
            }
        }
        ropePositions = n
    }

    /// Rotate-half RoPE in place on rows [T, heads·hd] for positions start..<start+T.
    func applyRope(_ x: UnsafeMutablePointer<Float>, rows: Int, heads: Int, start: Int) {
        let hd = config.headDim, half = hd / 2
        ropeCos.withUnsafeBufferPointer { cosT in
            ropeSin.withUnsafeBufferPointer { sinT in
                for t in 0..<rows {
                    let c = cosT.baseAddress! + (start + t) * half, s = sinT.baseAddress! + (start + t) * half
                    for h in 0..<heads {
                        let v = x + (t * heads + h) * hd
                        for i in 0..<half {
                            let a = v[i], b = v[i + half]
                            v[i] = a * c[i] - b * s[i]
                            v[i + half] = b * c[i] + a * s[i]
                        }
                    }
                }
            }
        }
    }

    public var parameterCount: Int {
        var n = config.vocabSize * config.hiddenSize + norm.count + (lmHead.map { $0.inFeatures * $0.outFeatures } ?? 0)
        for l in layers {
            n += l.inputLayernorm.count + l.postAttentionLayernorm.count
            for lin in [l.selfAttn.qProj, l.selfAttn.kProj, l.selfAttn.vProj, l.selfAttn.oProj, l.mlp.gateProj, l.mlp.upProj, l.mlp.downProj]
                + [l.basisChange1, l.basisChange2].compactMap({ $0 }) {
                n += lin.inFeatures * lin.outFeatures + (lin.bias?.count ?? 0)
            }
        }
        return n
    }

    /// Embeddings of `ids`: [T, d].
    public func embed(_ ids: [Int]) -> [Float] {
        let d = config.hiddenSize
        var x = [Float](repeating: 0, count: ids.count * d)
        x.withUnsafeMutableBufferPointer { px in
            for (t, id) in ids.enumerated() {
                precondition(id >= 0 && id < config.vocabSize, "token id \(id) is outside the vocabulary (\(config.vocabSize))")
                if let embeddingKernel {
                    embeddingKernel.row(id, into: px.baseAddress! + t * d)
                } else {
                    for j in 0..<d { px[t * d + j] = embedTokens[id * d + j] }
                }
            }
        }
        return x
    }

    /// Prompt tokens per forward pass when filling a KV cache: a long prompt goes through in chunks, so its
    /// activations (the [T, F] MLP buffers above all) stay a few MB instead of growing with the prompt.
    public var prefillChunk = 512

    /// Logits for `ids` at positions cache.length ..< cache.length + T (0 ..< T without a cache): [T or 1, V].
    /// With a cache, the new keys and values are appended to it, `prefillChunk` tokens at a time.
    public func forward(_ ids: [Int], cache: KVCache? = nil, logits rows: LogitsRows = .all) -> [Float] {
        withSingleThreadedBLAS {
            guard cache != nil, ids.count > prefillChunk, rows == .last else {
                return forwardBody(ids, cache: cache, packing: nil, logits: rows)
            }
            var start = 0, logits: [Float] = []
            while start < ids.count {
                let end = min(start + prefillChunk, ids.count)
                logits = forwardBody(Array(ids[start..<end]), cache: cache, packing: nil, logits: .last)
                start = end
            }
            return logits
        }
    }

    /// Logits of the packed sequences `ids` (laid out by `packing`) at the packed rows `rows` selects.
    public func forward(packed ids: [Int], _ packing: PackedSequences, logits rows: LogitsRows) -> [Float] {
        precondition(ids.count == packing.rowCount, "\(ids.count) packed tokens for \(packing.rowCount) packed rows")
        return withSingleThreadedBLAS { forwardBody(ids, cache: nil, packing: packing, logits: rows) }
    }

    func forwardBody(_ ids: [Int], cache: KVCache?, packing: PackedSequences?, logits rows: LogitsRows) -> [Float] {
        var x = embed(ids)
        for l in 0..<layers.count { decoderLayerBody(l, &x, rows: ids.count, cache: cache, packing: packing) }
        cache?.advance(by: ids.count)
        return head(&x, rows: ids.count, logits: rows)
    }

    /// Final norm and LM head over the residual stream x [T, d].
    public func head(_ x: inout [Float], rows T: Int, logits which: LogitsRows) -> [Float] {
        let d = config.hiddenSize, V = config.vocabSize
        let picked: [Int]
        switch which {
        case .all: picked = Array(0..<T)
        case .last: picked = [T - 1]
        case .rows(let rows):
            precondition(rows.allSatisfy { (0..<T).contains($0) }, "logit rows outside the \(T) rows")
            picked = rows
        }
        let n = picked.count
        var h = [Float](repeating: 0, count: n * d)
        x.withUnsafeBufferPointer { px in
            h.withUnsafeMutableBufferPointer { ph in
                for (i, t) in picked.enumerated() { rmsNorm(px.baseAddress! + t * d, norm, ph.baseAddress! + i * d, d, eps: Float(config.rmsNormEps)) }
                hook?(layers.count, .lmHeadInput, ph.baseAddress!, n, d)
            }
        }
        var logits = [Float](repeating: 0, count: n * V)
        h.withUnsafeBufferPointer { ph in
            logits.withUnsafeMutableBufferPointer { pl in
                if let lmHead {
                    lmHead(ph.baseAddress!, rows: n, into: pl.baseAddress!)
                } else if let embeddingKernel {
                    embeddingKernel.apply(ph.baseAddress!, rows: n, into: pl.baseAddress!)
                } else {
                    embedTokens.withUnsafeBufferPointer { w in
                        parallelSgemm(transB: true, n, V, d, 1, ph.baseAddress!, d, w.baseAddress!, d, pl.baseAddress!, V)
                    }
                }
            }
        }
        return logits
    }

    /// One decoder layer over x [T, d] in place (residual stream), at positions cache.length ..< cache.length + T.
    public func decoderLayer(_ l: Int, _ x: inout [Float], rows T: Int, cache: KVCache?) {
        withSingleThreadedBLAS { decoderLayerBody(l, &x, rows: T, cache: cache) }
    }

    func decoderLayerBody(_ l: Int, _ x: inout [Float], rows T: Int, cache: KVCache?, packing: PackedSequences? = nil) {
        let context = attentionContext(l, attentionInput(l, x, rows: T), rows: T, cache: cache, packing: packing)
        addAttentionOutput(l, &x, context, rows: T)
        addMLPOutput(l, &x, downProjInput(l, mlpInput(l, x, rows: T), rows: T), rows: T)
    }

    // The decoder layer in stages, so layer-wise calibration can quantize one group of linears, then run the next
    // stage with it (q/k/v → o_proj → gate/up → down_proj) without re-running the whole layer.

    /// input_layernorm(x) [T, d], the input of q/k/v (offered to the hook).
    public func attentionInput(_ l: Int, _ x: [Float], rows T: Int) -> [Float] {
        normed(l, x, layers[l].inputLayernorm, .attentionInput, rows: T)
    }

    /// post_attention_layernorm(x) [T, d], the input of gate/up (offered to the hook).
    public func mlpInput(_ l: Int, _ x: [Float], rows T: Int) -> [Float] {
        normed(l, x, layers[l].postAttentionLayernorm, .mlpInput, rows: T)
    }

    func normed(_ l: Int, _ x: [Float], _ w: [Float], _ site: HookSite, rows T: Int) -> [Float] {
        let d = config.hiddenSize, eps = Float(config.rmsNormEps)
        var h = [Float](repeating: 0, count: T * d)
        x.withUnsafeBufferPointer { px in
            h.withUnsafeMutableBufferPointer { ph in
                for t in 0..<T { rmsNorm(px.baseAddress! + t * d, w, ph.baseAddress! + t * d, d, eps: eps) }
                hook?(l, site, ph.baseAddress!, T, d)
            }
        }
        return h
    }

    /// q/k/v projections, RoPE, the KV cache and causal attention over the normed input h [T, d]: the attention
    /// context [T, H·hd], the input of o_proj (offered to the hook). Positions continue from the cache's length, or
    /// follow `packing`'s segments (then without a cache).
    public func attentionContext(_ l: Int, _ h: [Float], rows T: Int, cache: KVCache?, packing: PackedSequences? = nil) -> [Float] {
        let c = config, attn = layers[l].selfAttn
        let H = c.numAttentionHeads, KV = c.numKeyValueHeads, hd = c.headDim
        precondition(packing == nil || (cache == nil && packing!.rowCount == T), "packed rows need no cache and one row per token")
        let start = cache?.length ?? 0
        ensureRope(packing?.positions ?? start + T)
        var q = [Float](repeating: 0, count: T * H * hd)
        var k = [Float](repeating: 0, count: T * KV * hd)
        var v = [Float](repeating: 0, count: T * KV * hd)
        var context = [Float](repeating: 0, count: T * H * hd)
        h.withUnsafeBufferPointer { ph in
            q.withUnsafeMutableBufferPointer { pq in
                k.withUnsafeMutableBufferPointer { pk in
                    v.withUnsafeMutableBufferPointer { pv in
                        context.withUnsafeMutableBufferPointer { pc in
                            let h = ph.baseAddress!, q = pq.baseAddress!, k = pk.baseAddress!, v = pv.baseAddress!
                            let ctx = pc.baseAddress!
                            Linear.apply([attn.qProj, attn.kProj, attn.vProj], h, rows: T, into: [q, k, v])
                            if let packing {
                                for s in packing.segments {
                                    applyRope(q + s.rows.lowerBound * H * hd, rows: s.rows.count, heads: H, start: s.start)
                                    applyRope(k + s.rows.lowerBound * KV * hd, rows: s.rows.count, heads: KV, start: s.start)
                                }
                            } else {
                                applyRope(q, rows: T, heads: H, start: start)
                                applyRope(k, rows: T, heads: KV, start: start)
                            }
                            hook?(l, .queries, q, T, H * hd)
                            hook?(l, .keys, k, T, KV * hd)
                            hook?(l, .values, v, T, KV * hd)
                            // A quantized KV cache's rounding when the keys and values stay fp32 here (no cache, or
                            // an fp32 one); a packed cache rounds them as it stores them.
                            if let f = kvCacheFormat, cache?.format != f {
                                f.keys.roundTrip(k, rows: T * KV)
                                f.values.roundTrip(v, rows: T * KV)
                            }
                            if let cache {
                                cache.store(l, keys: k, values: v, rows: T, at: start)
                                if T <= 4 {
                                    cache.attentionDecode(l, q, ctx, rows: T, start: start, heads: H)
                                } else {
                                    cache.withFloats(l, positions: start + T) { ck, cv in
                                        attention(q, ck, cv, ctx, rows: T, start: start)
                                    }
                                }
                            } else if let packing {
                                packedAttention(q, k, v, ctx, packing)
                            } else {
                                attention(q, k, v, ctx, rows: T, start: 0)
                            }
                            hook?(l, .oProjInput, ctx, T, H * hd)
                        }
                    }
                }
            }
        }
        return context
    }

    /// x += o_proj(context) (x ← basis_change_1(x) first, where the layer has one).
    public func addAttentionOutput(_ l: Int, _ x: inout [Float], _ context: [Float], rows T: Int) {
        if let b = layers[l].basisChange1 { changeBasis(l, b, &x, rows: T) }
        addProjection(layers[l].selfAttn.oProj, context, to: &x, rows: T)
    }

    /// x ← x·Bᵀ, the input offered to the hook first (the reference quantizes it to 8 bits).
    func changeBasis(_ l: Int, _ b: Linear, _ x: inout [Float], rows T: Int) {
        var y = [Float](repeating: 0, count: T * b.outFeatures)
        x.withUnsafeMutableBufferPointer { px in
            hook?(l, .basisChangeInput, px.baseAddress!, T, b.inFeatures)
            y.withUnsafeMutableBufferPointer { b(px.baseAddress!, rows: T, into: $0.baseAddress!) }
        }
        x = y
    }

    /// silu(gate_proj(h)) ⊙ up_proj(h) [T, F], the input of down_proj (offered to the hook).
    public func downProjInput(_ l: Int, _ h: [Float], rows T: Int) -> [Float] {
        let mlp = layers[l].mlp, F = config.intermediateSize
        var gate = [Float](repeating: 0, count: T * F)
        var up = [Float](repeating: 0, count: T * F)
        h.withUnsafeBufferPointer { ph in
            gate.withUnsafeMutableBufferPointer { pg in
                up.withUnsafeMutableBufferPointer { pu in
                    Linear.apply([mlp.gateProj, mlp.upProj], ph.baseAddress!, rows: T, into: [pg.baseAddress!, pu.baseAddress!])
                    siluMultiply(pg.baseAddress!, pu.baseAddress!, T * F)
                    hook?(l, .downProjInput, pg.baseAddress!, T, F)
                }
            }
        }
        return gate
    }

    /// x += down_proj(g) (x ← basis_change_2(x) first, where the layer has one).
    public func addMLPOutput(_ l: Int, _ x: inout [Float], _ g: [Float], rows T: Int) {
        if let b = layers[l].basisChange2 { changeBasis(l, b, &x, rows: T) }
        addProjection(layers[l].mlp.downProj, g, to: &x, rows: T)
    }

    func addProjection(_ linear: Linear, _ input: [Float], to x: inout [Float], rows T: Int) {
        var y = [Float](repeating: 0, count: T * linear.outFeatures)
        input.withUnsafeBufferPointer { pi in y.withUnsafeMutableBufferPointer { linear(pi.baseAddress!, rows: T, into: $0.baseAddress!) } }
        for i in 0..<y.count { x[i] += y[i] }
    }

    /// Causal grouped-query attention of T new queries (positions start..<start+T) over keys/values 0..<start+T,
    /// all position-major: q [T, H·hd], k/v [start+T, KV·hd], ctx [T, H·hd].
    /// The `group` query heads that share a KV head are gathered into one [T·group, hd] matrix, so each GEMM covers
    /// all of them; query positions go in blocks so a block's scores only span the keys it can see (the causal half
    /// is never computed).
    func attention(_ q: UnsafePointer<Float>, _ k: UnsafePointer<Float>, _ v: UnsafePointer<Float>,
                   _ ctx: UnsafeMutablePointer<Float>, rows T: Int, start: Int) {
        withSingleThreadedBLAS { attentionBody(q, k, v, ctx, rows: T, start: start) }
    }

    /// Attention of each packed segment over its prefix's keys and its own, the segments spread over the workers
    /// (a segment of a few dozen rows is too small to split).
    func packedAttention(_ q: UnsafePointer<Float>, _ k: UnsafePointer<Float>, _ v: UnsafePointer<Float>,
                         _ ctx: UnsafeMutablePointer<Float>, _ packing: PackedSequences) {
        let H = config.numAttentionHeads, width = config.numKeyValueHeads * config.headDim, hd = config.headDim
        let segments = packing.segments
        let workers = min(forwardWorkers, segments.count)
        let longest = packing.positions
        withSingleThreadedBLAS {
            parallelFor(workers) { w in
                // A continued segment's keys/values: the prefix's rows, then its own, contiguous as attentionBody wants.
                let kv = UnsafeMutablePointer<Float>.allocate(capacity: 2 * longest * width)
                defer { kv.deallocate() }
                for s in stride(from: w, to: segments.count, by: workers).map({ segments[$0] }) {
                    let r0 = s.rows.lowerBound, n = s.rows.count
                    if let p = s.prefix {
                        let prefixRows = segments[p].rows
                        let keys = kv, values = kv + longest * width
                        keys.update(from: k + prefixRows.lowerBound * width, count: s.start * width)
                        (keys + s.start * width).update(from: k + r0 * width, count: n * width)
                        values.update(from: v + prefixRows.lowerBound * width, count: s.start * width)
                        (values + s.start * width).update(from: v + r0 * width, count: n * width)
                        attentionBody(q + r0 * H * hd, keys, values, ctx + r0 * H * hd, rows: n, start: s.start, workers: 1)
                    } else {
                        attentionBody(q + r0 * H * hd, k + r0 * width, v + r0 * width, ctx + r0 * H * hd, rows: n, start: 0, workers: 1)
                    }
                }
            }
        }
    }

    func attentionBody(_ q: UnsafePointer<Float>, _ k: UnsafePointer<Float>, _ v: UnsafePointer<Float>,
                       _ ctx: UnsafeMutablePointer<Float>, rows T: Int, start: Int, workers maxWorkers: Int = forwardWorkers) {
        let H = config.numAttentionHeads, KV = config.numKeyValueHeads, hd = config.headDim
        let group = H / KV
        let scale = 1 / Float(hd).squareRoot()
        let block = 64    // 32–256 measured within noise of each other on SmolLM2 at 2048 tokens
        let total = start + T
        let qg = UnsafeMutablePointer<Float>.allocate(capacity: T * H * hd)    // [KV][T][group][hd]
        let cg = UnsafeMutablePointer<Float>.allocate(capacity: T * H * hd)
        let blocks = (T + block - 1) / block
        let workers = KV * blocks >= 2 ? maxWorkers : 1
        let scoresPerWorker = min(block, T) * group * total
        let scores = UnsafeMutablePointer<Float>.allocate(capacity: workers * scoresPerWorker)
        defer { qg.deallocate(); cg.deallocate(); scores.deallocate() }
        for t in 0..<T {
            for h in 0..<H {
                (qg + ((h / group * T + t) * group + h % group) * hd).update(from: q + (t * H + h) * hd, count: hd)
            }
        }
        // Tasks (KV head, position block), interleaved over workers; later blocks see more keys, so striding
        // balances the causal triangle.
        parallelFor(workers) { w in
            let scores = scores + w * scoresPerWorker
            for task in stride(from: w, to: KV * blocks, by: workers) {
                let g = task % KV, r0 = task / KV * block
                let r1 = min(r0 + block, T), n = (r1 - r0) * group
                let visible = start + r1         // keys the block's last position may see
                let rowsBase = (g * T + r0) * group * hd
                Float.gemm(false, true, n, visible, hd, scale, qg + rowsBase, hd, k + g * hd, KV * hd, 0, scores, visible)
                for i in 0..<n {
                    let row = scores + i * visible
                    let seen = start + r0 + i / group + 1
                    softmaxInPlace(row, seen)
                    if seen < visible { (row + seen).update(repeating: 0, count: visible - seen) }
                }
                Float.gemm(false, false, n, hd, visible, 1, scores, visible, v + g * hd, KV * hd, 0, cg + rowsBase, hd)
            }
        }
        for t in 0..<T {
            for h in 0..<H {
                (ctx + (t * H + h) * hd).update(from: cg + ((h / group * T + t) * group + h % group) * hd, count: hd)
            }
        }
    }
}
