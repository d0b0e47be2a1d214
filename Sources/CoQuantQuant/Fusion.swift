import CoQuantModel
import CoQuantTensor

// Norm fusion and QuaRot-style rotation fusion (COQUANT_RESQ.md §2.1 step 2, §2.2 step 3). Math in float64, weights
// cast back to float32. Shapes: d hidden, W [out, in] as stored; Q [d, d] orthogonal; a residual stream h in the
// rotated basis is h·Q, so every consumer of the residual takes W ← W·Q (input side) and every producer W ← Qᵀ·W
// (output side).

/// Folds each RMSNorm weight into the linears that read its output (q/k/v ← input_layernorm, gate/up ←
/// post_attention_layernorm, lm_head ← final norm) and sets the norms to 1, so the norms commute with rotations.
/// A tied head is untied first (as the reference does), since the final norm can only be folded into the head.
/// `centerEmbeddings` reproduces the reference's QuaRot legacy step E ← E − mean_row(E), which is **not**
/// function-preserving for RMSNorm models (COQUANT_RESQ.md §5 item 12); on for parity with the reference runs.
public func fuseNorms(_ model: LlamaModel, centerEmbeddings: Bool) {
    let c = model.config, d = c.hiddenSize
    if model.lmHead == nil {
        model.lmHead = Linear(weight: model.embedTokens, inFeatures: d, outFeatures: c.vocabSize)
    }
    if centerEmbeddings {
        for r in 0..<c.vocabSize {
            var mean = 0.0
            for j in 0..<d { mean += Double(model.embedTokens[r * d + j]) }
            mean /= Double(d)
            for j in 0..<d { model.embedTokens[r * d + j] = Float(Double(model.embedTokens[r * d + j]) - mean) }
        }
    }
    for i in model.layers.indices {
        let gIn = model.layers[i].inputLayernorm, gPost = model.layers[i].postAttentionLayernorm
        scaleColumns(&model.layers[i].selfAttn.qProj, gIn)
        scaleColumns(&model.layers[i].selfAttn.kProj, gIn)
        scaleColumns(&model.layers[i].selfAttn.vProj, gIn)
        scaleColumns(&model.layers[i].mlp.gateProj, gPost)
        scaleColumns(&model.layers[i].mlp.upProj, gPost)
        model.layers[i].inputLayernorm = [Float](repeating: 1, count: d)
        model.layers[i].postAttentionLayernorm = [Float](repeating: 1, count: d)
    }
    scaleColumns(&model.lmHead!, model.norm)
    model.norm = [Float](repeating: 1, count: d)
}

/// W ← W·diag(g), in float64.
func scaleColumns(_ linear: inout Linear, _ g: [Float]) {
    let n = linear.inFeatures
    for r in 0..<linear.outFeatures {
        for j in 0..<n { linear.weight[r * n + j] = Float(Double(linear.weight[r * n + j]) * Double(g[j])) }
    }
}

/// Rotates the residual stream of a norm-fused model by the orthogonal Q [d, d]: embeddings and every reader of the
/// residual (q/k/v, gate/up, lm_head) take W·Q, every writer (o_proj, down_proj, with biases) takes Qᵀ·W.
/// At full precision the model computes the same function.
public func rotateResidual(_ model: LlamaModel, _ Q: Matrix<Double>) {
    let L = model.layers.count
    rotateResidual(model, attention: Array(repeating: Q, count: L + 1), mlp: Array(repeating: Q, count: L))
}

/// Per-block bases [d, d]: layer i's attention block reads the residual in basis Qa[i] (q/k/v take W·Qa[i]) and its
/// MLP block in Qm[i] (gate/up take W·Qm[i]); each writer produces what the next reader expects (embeddings ·Qa[0],
/// o_proj Qm[i]ᵀ·W, down_proj Qa[i+1]ᵀ·W), and lm_head reads Qa[L]. With all bases equal this is a plain rotation of
/// the stream; otherwise the residual itself must change basis between blocks (ResQ/CoQuant's basis_change_1/2,
/// which their fusion adds).
public func rotateResidual(_ model: LlamaModel, attention Qa: [Matrix<Double>], mlp Qm: [Matrix<Double>]) {
    let c = model.config, d = c.hiddenSize, L = model.layers.count
    precondition(Qa.count == L + 1 && Qm.count == L, "need \(L + 1) attention-input and \(L) MLP-input bases")
    precondition((Qa + Qm).allSatisfy { $0.rows == d && $0.cols == d }, "residual rotations must be \(d)×\(d)")
    precondition(model.layers.allSatisfy { $0.inputLayernorm.allSatisfy { $0 == 1 } } && model.lmHead != nil,
                 "fuse the norms before rotating the residual stream")
    model.embedTokens = rightMultiply(model.embedTokens, rows: c.vocabSize, Qa[0])
    for i in 0..<L {
        var layer = model.layers[i]
        for (names, Q) in [(LinearGroup.qkv.names, Qa[i]), (LinearGroup.gateUp.names, Qm[i])] {
            for name in names {
                layer[linear: name].weight = rightMultiply(layer[linear: name].weight, rows: layer[linear: name].outFeatures, Q)
            }
        }
        rotateOutput(&layer.selfAttn.oProj, Qm[i])
        rotateOutput(&layer.mlp.downProj, Qa[i + 1])
        model.layers[i] = layer
    }
    model.lmHead!.weight = rightMultiply(model.lmHead!.weight, rows: c.vocabSize, Qa[L])
}

/// Rotates each KV head's value space by its own orthogonal Q_v [hd, hd]: v_proj rows (and bias) of head h take
/// Q_vᵀ·W, and o_proj's input columns of every query head that reads head h take W·Q_v.
public func rotateValueHeads(_ model: LlamaModel, layer i: Int, _ Qv: [Matrix<Double>]) {
    let c = model.config, hd = c.headDim, KV = c.numKeyValueHeads, group = c.numAttentionHeads / KV, d = c.hiddenSize
    precondition(Qv.count == KV && Qv.allSatisfy { $0.rows == hd && $0.cols == hd })
    var v = model.layers[i].selfAttn.vProj, o = model.layers[i].selfAttn.oProj
    for h in 0..<KV {
        let Qt = Qv[h].transposed
        let rows = Matrix(rows: hd, cols: d, data: v.weight[(h * hd * d)..<((h + 1) * hd * d)].map(Double.init))
        v.weight.replaceSubrange((h * hd * d)..<((h + 1) * hd * d), with: (Qt * rows).data.map { Float($0) })
        if let b = v.bias {
            let bh = Matrix(rows: hd, cols: 1, data: b[(h * hd)..<((h + 1) * hd)].map(Double.init))
            v.bias!.replaceSubrange((h * hd)..<((h + 1) * hd), with: (Qt * bh).data.map { Float($0) })
        }
    }
    // o_proj columns of query head j: W_o[:, j] ← W_o[:, j]·Q_v, one GEMM per head on the strided column block.
    let inCols = o.inFeatures, outRows = o.outFeatures
    let Wo = o.weight.map(Double.init)
    var rotated = Wo
    Wo.withUnsafeBufferPointer { pw in
        rotated.withUnsafeMutableBufferPointer { pr in
            for j in 0..<c.numAttentionHeads {
                Qv[j / group].data.withUnsafeBufferPointer { q in
                    Double.gemm(false, false, outRows, hd, hd, 1, pw.baseAddress! + j * hd, inCols, q.baseAddress!, hd,
                                0, pr.baseAddress! + j * hd, inCols)
                }
            }
        }
    }
    o.weight = rotated.map { Float($0) }
    model.layers[i].selfAttn.vProj = v
    model.layers[i].selfAttn.oProj = o
}

/// W [rows, d] · Q [d, d] in float64.
func rightMultiply(_ w: [Float], rows: Int, _ Q: Matrix<Double>) -> [Float] {
    let W = Matrix(rows: rows, cols: Q.rows, data: w.map(Double.init))
    return (W * Q).data.map { Float($0) }
}

/// A linear that writes the residual: W ← Qᵀ·W, b ← Qᵀ·b.
func rotateOutput(_ linear: inout Linear, _ Q: Matrix<Double>) {
    let W = Matrix(rows: linear.outFeatures, cols: linear.inFeatures, data: linear.weight.map(Double.init))
    linear.weight = matmul(Q, transA: true, W).data.map { Float($0) }
    if let b = linear.bias {
        linear.bias = matmul(Q, transA: true, Matrix(rows: b.count, cols: 1, data: b.map(Double.init))).data.map { Float($0) }
    }
}
