import CoQuantModel
import CoQuantTensor

// CoQuant's output-error model (COQUANT_RESQ.md §1.3) checked against a measurement, per layer and block input.
//
// Shapes: X [s, d] a sample of the block input (s tokens of the first calibration window), W [R, d] the linears
// reading it stacked (q/k/v or gate/up, norm-fused), U = P·R1 [d, d] the fused basis, blocks L = first d − r
// columns on the low grids, H = last r on the high ones.
//
//   predicted J = Σ_k γ_k·a_k·b_k,  γ_k = (α_k² + β_k²)/d_k,  α_k², β_k² = 1/(2^(N−1) − 1)² at the activation and
//                 weight bit widths of block k (the reference takes both from one N_k),
//                 a_k = tr(U_kᵀ XᵀX U_k),  b_k = tr(U_kᵀ WᵀW U_k)
//   measured    = ‖X Wᵀ − Q(X U)·Q(W U)ᵀ‖²,  Q(XU) the run's per-token activation quantizers (4/8-bit blocks),
//                 Q(WU) round-to-nearest on per-channel max-range mixed grids (the model's assumption: no GPTQ)
//
// Both are divided by ‖X Wᵀ‖² = tr(XᵀX·WᵀW). The model is a first-order proxy with isotropic noise, so its
// absolute level need not match; what it must get right is which layers and inputs hurt most — the report gives
// the rank correlation across all block inputs.

/// One block input of one layer: the error model's relative output error next to the measured one.
public struct OutputErrorCheck: Codable, Sendable {
    public let layer: Int
    public let input: String         // "attention" (q/k/v) or "mlp" (gate/up)
    public let predicted: Double
    public let measured: Double
}

/// Relative predicted and measured output error of quantizing X and W in the basis U (see the file comment).
/// Activations at 16 bits (nil quantizers) count as exact: α = 0. r = 0 is a single low block (no subspace).
public func outputErrorCheck(X: Matrix<Double>, W: Matrix<Double>, U: Matrix<Double>, high r: Int,
                             activationLow: ActivationQuantizer?, activationHigh: ActivationQuantizer?,
                             weightLow: QuantGrid, weightHigh: QuantGrid) throws -> (predicted: Double, measured: Double) {
    let d = X.cols
    precondition(W.cols == d && U.rows == d && U.cols == d && r >= 0 && r < d)
    let XU = matmul(X, U), WU = matmul(W, U)
    let Y = matmul(X, transA: false, W, transB: true)
    let signal = Y.data.reduce(0) { $0 + $1 * $1 }

    func blockEnergy(_ A: Matrix<Double>, _ cols: Range<Int>) -> Double {
        var s = 0.0
        for i in 0..<A.rows { for j in cols { s += A[i, j] * A[i, j] } }
        return s
    }
    var predicted = 0.0
    let blocks = [(0..<(d - r), activationLow?.bits ?? 16, weightLow.bits), ((d - r)..<d, activationHigh?.bits ?? 16, weightHigh.bits)]
    for (cols, aBits, wBits) in blocks where !cols.isEmpty {
        let gamma = (quantRelativeErrorCoefficient(bits: aBits) + quantRelativeErrorCoefficient(bits: wBits)) / Double(cols.count)
        predicted += gamma * blockEnergy(XU, cols) * blockEnergy(WU, cols)
    }

    var XUq = XU.data.map(Float.init)
    try XUq.withUnsafeMutableBufferPointer { p in
        try activationLow?.apply(p.baseAddress!, rows: X.rows, cols: d - r, rowStride: d)
        if r > 0 { try activationHigh?.apply(p.baseAddress! + (d - r), rows: X.rows, cols: r, rowStride: d) }
    }
    let grids = try ColumnGrids(columns: d, high: Array((d - r)..<d), low: weightLow, highGrid: weightHigh)
    let WUq = try RTN(columnGrids: grids).solve(W: WU, grid: weightLow).values
    let Yq = matmul(Matrix(rows: X.rows, cols: d, data: XUq.map(Double.init)), transA: false, WUq, transB: true)
    var noise = 0.0
    for i in Y.data.indices { noise += (Y.data[i] - Yq.data[i]) * (Y.data[i] - Yq.data[i]) }
    return (predicted / signal, noise / signal)
}

/// The error model of a run's bases on the statistics' token sample, before the bases are
/// fused (the model is norm-fused, its linears still in the original basis).
func checkOutputErrorModel(_ model: LlamaModel, _ stats: SubspaceStatistics, _ bases: SubspaceBases,
                           options: QuantizeOptions) throws -> [OutputErrorCheck] {
    let highBits = options.subspace?.highBits ?? 8
    let q = try SubspaceQuantizers(activationBits: options.scheme.activationBits, kvBits: 16, highBits: highBits,
                                   activationClipRatio: Float(options.activationClipRatio))
    // The model's β² = 1/(2^(N−1) − 1)² is that of a plain max-range grid, so the check rounds on one (no MSE clip
    // search, whatever the run uses: that search over 80 ranges per row would cost more than the check is worth).
    var plain = options
    plain.weightClip = false
    let low = try plain.weightGrid(), high = try plain.weightGrid(bits: highBits)
    func stacked(_ linears: [Linear]) -> Matrix<Double> {
        Matrix(rows: linears.map(\.outFeatures).reduce(0, +), cols: linears[0].inFeatures,
               data: linears.flatMap { $0.weight.map(Double.init) })
    }
    var checks: [OutputErrorCheck] = []
    for l in stats.attentionSample.indices where l < stats.mlpSample.count {
        let a = model.layers[l].selfAttn, m = model.layers[l].mlp
        for (input, X, W, U) in [("attention", stats.attentionSample[l], stacked([a.qProj, a.kProj, a.vProj]), bases.attentionRotation(l)),
                                 ("mlp", stats.mlpSample[l], stacked([m.gateProj, m.upProj]), bases.mlpRotation(l))] {
            let e = try outputErrorCheck(X: X, W: W, U: U, high: bases.high, activationLow: q.activationLow,
                                         activationHigh: q.activationHigh, weightLow: low, weightHigh: high)
            checks.append(OutputErrorCheck(layer: l, input: input, predicted: e.predicted, measured: e.measured))
        }
    }
    return checks
}

/// Spearman's rank correlation of two equally long series (average ranks for ties).
public func rankCorrelation(_ a: [Double], _ b: [Double]) -> Double {
    precondition(a.count == b.count && a.count > 1)
    func ranks(_ v: [Double]) -> [Double] {
        let order = v.indices.sorted { v[$0] < v[$1] }
        var rank = [Double](repeating: 0, count: v.count)
        var i = 0
        while i < order.count {
            var j = i
            while j + 1 < order.count && v[order[j + 1]] == v[order[i]] { j += 1 }
            for k in i...j { rank[order[k]] = Double(i + j) / 2 }
            i = j + 1
        }
        return rank
    }
    let ra = ranks(a), rb = ranks(b), n = Double(a.count)
    let ma = ra.reduce(0, +) / n, mb = rb.reduce(0, +) / n
    var sab = 0.0, saa = 0.0, sbb = 0.0
    for i in ra.indices { sab += (ra[i] - ma) * (rb[i] - mb); saa += (ra[i] - ma) * (ra[i] - ma); sbb += (rb[i] - mb) * (rb[i] - mb) }
    return sab / (saa * sbb).squareRoot()
}
