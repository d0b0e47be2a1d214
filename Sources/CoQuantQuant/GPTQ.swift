import CoQuantTensor

// GPTQ exactly as the reference `GPTQ.fasterquant` (IST-DASLab/gptq@2d65066:gptq.py:60-160; GPTQ_CDQUANT.md §2.3).
//
// Shapes: W [R, C] (rows = output channels), H [C, C], U [C, C] upper with H_λ⁻¹ = UᵀU, B = blockSize,
// g = group size, W1 / Err1 [R, cnt] for the current block of cnt ≤ B columns.
//
// Columns are quantized left to right (in act-order: by descending diag H). Quantizing column i of a row to q
// and re-solving the not-yet-quantized columns F is the OBS update w_F ← w_F − (w_i − q)/U_ii · U[i, F], which
// raises the loss by exactly (w_i − q)²/U_ii² (§2.4). Inside a block the update is a rank-1 step per column; the
// columns after the block get all of it at once, as one GEMM (the "lazy batch" update).
// Rows never interact (they share only U), so each worker thread runs the whole loop on its own rows.

public struct GPTQ: WeightSolver {
    public var blockSize: Int
    /// λ = percDamp · mean(diag H) is added to diag H.
    public var percDamp: Double
    /// Process columns by descending diag H (`--act-order`); Ŵ comes back in the original order.
    public var actOrder: Bool
    /// Group parameters computed once, from W before any error feedback, over groups of the original columns.
    public var staticGroups: Bool
    /// Dynamic groups only. false (the reference): at a group start, `find_params` reads the global W, which lacks
    /// the error feedback of the earlier columns of the *current* block (quirk Q1), so the result depends on B when
    /// g < B. true: it reads the block's working copy W1, which has that feedback; B must be a multiple of g, and
    /// the result equals the reference at B = g (or 1) for every such B.
    public var fixedDynamicGroups: Bool
    /// If the Cholesky chain fails, percdamp is multiplied by 10 while it stays ≤ this.
    public var maxPercDamp: Double
    /// Mixed precision (ResQ/CoQuant): per-column grids with parameters fixed from the original W; `grid` is then
    /// ignored. The columns are processed low grid first, high grid last (`ColumnGrids.lowFirstOrder`).
    public var columnGrids: ColumnGrids?

    public init(blockSize: Int = 128, percDamp: Double = 0.01, actOrder: Bool = false, staticGroups: Bool = false,
                fixedDynamicGroups: Bool = false, maxPercDamp: Double = 1) {
        self.blockSize = blockSize
        self.percDamp = percDamp
        self.actOrder = actOrder
        self.staticGroups = staticGroups
        self.fixedDynamicGroups = fixedDynamicGroups
        self.maxPercDamp = maxPercDamp
        self.columnGrids = nil
    }

    public func solve(W original: Matrix<Double>, H hessian: Matrix<Double>?, grid: QuantGrid) throws -> QuantizedWeight {
        guard var H = hessian else { throw QuantError.missingHessian }
        let R = original.rows, C = original.cols
        guard H.rows == C && H.cols == C else {
            throw QuantError.shapeMismatch("W is \(R)×\(C) but H is \(H.rows)×\(H.cols)")
        }
        guard blockSize >= 1, percDamp >= 0 else {
            throw QuantError.invalidParameter("GPTQ needs blockSize ≥ 1 and percDamp ≥ 0 (got \(blockSize), \(percDamp))")
        }
        guard H.data.allSatisfy({ $0.isFinite }) else { throw QuantError.nonFiniteHessian }
        guard original.data.allSatisfy({ $0.isFinite }) else {
            throw QuantError.invalidParameter("W has NaN or infinite entries")
        }
        let cg = columnGrids
        if let cg {
            guard cg.group.count == C else { throw QuantError.shapeMismatch("column grids for \(cg.group.count) columns, W has \(C)") }
            guard !actOrder else { throw QuantError.invalidParameter("act-order cannot be combined with mixed-precision column grids") }
        }
        let gs = cg == nil ? try grid.weightGroupSize(columns: C) : nil
        let dynamicGroups = gs != nil && !staticGroups
        // Parameters are chosen a span at a time: the group, or a K-quant's 256-column super-block of groups.
        let span = gs.map { grid.span(groupSize: $0) } ?? C
        if dynamicGroups && fixedDynamicGroups && blockSize % span != 0 {
            throw QuantError.invalidParameter("fixed dynamic groups need a block size (\(blockSize)) that is a multiple of the group size (\(span))")
        }
        let G = cg?.grids.count ?? gs.map { C / $0 } ?? 1
        let groupMaxq = cg.map { $0.grids.map { Double($0.maxq) } } ?? [Double(grid.maxq)]
        var W = original
        var scales = Matrix<Double>(zeros: R, G), zeros = Matrix<Double>(zeros: R, G)
        if let cg { (scales, zeros) = cg.parameters(W) }

        // Step 2 (L72-73): per-row parameters from the original W, before dead columns are zeroed (quirk Q2).
        // With groups they are recomputed at column 0 anyway, so only the per-channel case needs them.
        if gs == nil && cg == nil {
            // With the MSE clip search this is seconds for a wide linear (Qwen2.5's down_proj: 896 × 4864).
            let workers = parameterSearchWorkers(rows: R, cols: C, mse: grid.mse != nil)
            W.data.withUnsafeBufferPointer { pw in
                scales.data.withUnsafeMutableBufferPointer { ps in
                    zeros.data.withUnsafeMutableBufferPointer { pz in
                        parallelFor(workers) { w in
                            for r in (R * w / workers)..<(R * (w + 1) / workers) {
                                (ps[r], pz[r]) = grid.parameters(of: UnsafeBufferPointer(rebasing: pw[(r * C)..<((r + 1) * C)]))
                            }
                        }
                    }
                }
            }
        }
        // Step 3 (L77-79): a dead input (H_jj = 0) gets H_jj = 1 and W[:, j] = 0, so it ends exactly at 0.
        for j in 0..<C where H[j, j] == 0 {
            H[j, j] = 1
            for r in 0..<R { W[r, j] = 0 }
        }
        // Step 4 (L81-87): static groups, on W after dead zeroing, before permutation and any update.
        if let g = gs, staticGroups {
            W.data.withUnsafeBufferPointer { pw in
                scales.data.withUnsafeMutableBufferPointer { ps in
                    zeros.data.withUnsafeMutableBufferPointer { pz in
                        for r in 0..<R {
                            for c0 in stride(from: 0, to: C, by: span) {
                                grid.parameters(ofSpan: UnsafeBufferPointer(rebasing: pw[(r * C + c0)..<(r * C + c0 + span)]), groupSize: g,
                                                scales: ps.baseAddress! + r * G + c0 / g, zeros: pz.baseAddress! + r * G + c0 / g)
                            }
                        }
                    }
                }
            }
        }
        // Step 5 (L89-93): act-order. torch.argsort is not stable; ties (e.g. several dead columns, all at 1) are
        // broken by ascending column index here (quirk Q4).
        var perm = Array(0..<C)
        if actOrder { perm.sort { H[$0, $0] > H[$1, $1] || (H[$0, $0] == H[$1, $1] && $0 < $1) } }
        if let cg { perm = cg.lowFirstOrder }
        if perm != Array(0..<C) {
            W = permuteColumns(W, perm)
            var hp = Matrix<Double>(zeros: C, C)
            for i in 0..<C { for j in 0..<C { hp[i, j] = H[perm[i], perm[j]] } }
            H = hp
        }
        // Steps 7-8 (L98-104): damping, then U = chol_upper(H_λ⁻¹).
        let factor = try dampedInverseFactor(H)
        let U = factor.U

        // Step 9 (L106-143): the column loop. Plain buffers, so worker threads can share them (each writes only
        // its own rows; U and perm are read-only).
        let B = min(blockSize, C)
        let pw = UnsafeMutablePointer<Double>.allocate(capacity: R * C)      // W, updated between blocks
        let pq = UnsafeMutablePointer<Double>.allocate(capacity: R * C)      // Q (processing order)
        let pc = UnsafeMutablePointer<Int32>.allocate(capacity: R * C)       // codes (processing order)
        let ps = UnsafeMutablePointer<Double>.allocate(capacity: R * G)      // scales [R, G]
        let pz = UnsafeMutablePointer<Double>.allocate(capacity: R * G)      // zeros [R, G]
        let pe = UnsafeMutablePointer<Double>.allocate(capacity: R)          // Σ Losses per row
        defer { for p in [pw, pq, ps, pz, pe] { p.deallocate() }; pc.deallocate() }
        pw.initialize(from: W.data, count: R * C)
        ps.initialize(from: scales.data, count: R * G)
        pz.initialize(from: zeros.data, count: R * G)
        pe.initialize(repeating: 0, count: R)

        let workers = R * C * B >= 1 << 16 && R >= 2 ? min(forwardWorkers, R) : 1
        let columnGroup = cg.map { g in perm.map { g.group[$0] } }      // group of the k-th processed column
        U.data.withUnsafeBufferPointer { puBuf in
            let pu = puBuf.baseAddress!
            withSingleThreadedBLAS {
                parallelFor(workers) { w in
                    let r0 = R * w / workers, r1 = R * (w + 1) / workers
                    guard r1 > r0 else { return }
                    let w1 = UnsafeMutablePointer<Double>.allocate(capacity: (r1 - r0) * B)     // W1 [rows, cnt]
                    let err1 = UnsafeMutablePointer<Double>.allocate(capacity: (r1 - r0) * B)   // Err1 [rows, cnt]
                    defer { w1.deallocate(); err1.deallocate() }
                    for i1 in stride(from: 0, to: C, by: B) {
                        let i2 = min(i1 + B, C), cnt = i2 - i1
                        for r in r0..<r1 {
                            let row = w1 + (r - r0) * cnt, e = err1 + (r - r0) * cnt
                            row.update(from: pw + r * C + i1, count: cnt)          // W1 = W[:, i1:i2].clone()
                            // The grid in force where this block starts: per channel slot 0; with dynamic groups
                            // the current group's, which may have started in an earlier block (g not dividing B).
                            let k0 = dynamicGroups ? i1 / gs! : 0
                            var s = ps[r * G + k0], z = pz[r * G + k0], maxq = groupMaxq[0]
                            var loss = 0.0
                            for i in 0..<cnt {
                                let col = i1 + i
                                if let columnGroup {
                                    let k = columnGroup[col]
                                    s = ps[r * G + k]; z = pz[r * G + k]; maxq = groupMaxq[k]
                                } else if let g = gs {
                                    if staticGroups {
                                        // The group of the ORIGINAL column (L124-127).
                                        let k = perm[col] / g
                                        s = ps[r * G + k]; z = pz[r * G + k]
                                    } else if col % g == 0 {
                                        if col % span == 0 {
                                            // L120-123: the reference reads the global W, which lacks this block's
                                            // feedback (quirk Q1); the fixed variant reads W1. A K-quant's span
                                            // starts a block (B = 128 divides 256), where both are up to date.
                                            let src = fixedDynamicGroups ? row + i : pw + r * C + col
                                            grid.parameters(ofSpan: UnsafeBufferPointer(start: src, count: span), groupSize: g,
                                                            scales: ps + r * G + col / g, zeros: pz + r * G + col / g)
                                        }
                                        s = ps[r * G + col / g]; z = pz[r * G + col / g]
                                    }
                                }
                                let x = row[i]
                                let c = gridCode(x, scale: s, zero: z, maxq: maxq)
                                let q = s * (c - z)
                                pq[r * C + col] = q
                                pc[r * C + col] = Int32(c)
                                let d = pu[col * C + col]
                                loss += (x - q) * (x - q) / (d * d)           // Losses1 (L135)
                                let ei = (x - q) / d                          // err1 (L137)
                                let urow = pu + col * C + i1                  // U[col, i1..<i2]
                                for j in i..<cnt { row[j] -= ei * urow[j] }   // W1[:, i:] -= err1 ⊗ U[i, i:] (L138)
                                e[i] = ei
                            }
                            pe[r] += loss / 2                                 // Losses = Losses1 / 2 (L141)
                        }
                        // L143: W[:, i2:] -= Err1 · U[i1:i2, i2:], this worker's rows, one GEMM.
                        if i2 < C {
                            Double.gemm(false, false, r1 - r0, C - i2, cnt, -1, err1, cnt, pu + i1 * C + i2, C,
                                        1, pw + r0 * C + i2, C)
                        }
                    }
                }
            }
        }
        scales = Matrix(rows: R, cols: G, data: Array(UnsafeBufferPointer(start: ps, count: R * G)))
        zeros = Matrix(rows: R, cols: G, data: Array(UnsafeBufferPointer(start: pz, count: R * G)))

        // Step 10 (L155-156): back to the original column order.
        var values = Matrix<Double>(zeros: R, C)
        var outCodes = [Int32](repeating: 0, count: R * C)
        for r in 0..<R {
            for k in 0..<C {
                values.data[r * C + perm[k]] = pq[r * C + k]
                outCodes[r * C + perm[k]] = pc[r * C + k]
            }
        }
        var groupIndex = cg?.group ?? [Int](repeating: 0, count: C)
        if let g = gs {
            // Dynamic groups are consecutive in processing order: g_idx[c] = invperm[c]/g; static ones are not.
            for k in 0..<C { groupIndex[perm[k]] = (staticGroups ? perm[k] : k) / g }
        }
        var result = QuantizedWeight(values: values, codes: outCodes, scales: scales, zeros: zeros, groupIndex: groupIndex,
                                     permutation: actOrder ? perm : nil, dampingUsed: factor.percDamp, damp: factor.damp,
                                     dampingEscalations: factor.escalations, errorSum: (0..<R).reduce(0) { $0 + pe[$1] })
        result.groupMaxq = cg?.grids.map(\.maxq)
        return result
    }

    /// U with (H + λI)⁻¹ = UᵀU, λ = percdamp · mean(diag H), as the reference chains it (L101-104): L = chol(H_λ),
    /// H_λ⁻¹ = cholesky_inverse(L), U = chol_upper(H_λ⁻¹). The reference raises when H_λ is not positive definite;
    /// here percdamp is escalated ×10 (while ≤ maxPercDamp) and the escalations are reported.
    func dampedInverseFactor(_ H: Matrix<Double>) throws -> (U: Matrix<Double>, percDamp: Double, damp: Double, escalations: Int) {
        let C = H.rows
        var trace = 0.0
        for j in 0..<C { trace += H[j, j] }
        let meanDiag = trace / Double(C)
        var p = percDamp, escalations = 0
        while true {
            let damp = p * meanDiag
            var hd = H
            for j in 0..<C { hd[j, j] += damp }
            do {
                let U = try cholesky(try choleskyInverse(hd), upper: true)
                // A numerically singular H_λ can factor with a ~0 pivot and blow up in the inverse: escalate too.
                guard U.data.allSatisfy({ $0.isFinite }) else {
                    throw QuantError.invalidParameter("H_λ⁻¹ has non-finite entries (H_λ numerically singular)")
                }
                return (U, p, damp, escalations)
            } catch {
                let next = p > 0 ? p * 10 : 0.01
                guard next <= maxPercDamp * (1 + 1e-12) else {     // 0.01·10·10 is 1.0000000000000002
                    throw QuantError.choleskyFailed(percDamp: p, escalations: escalations, reason: "\(error)")
                }
                p = next
                escalations += 1
            }
        }
    }
}

/// W[:, perm]: column k of the result is column perm[k] of W.
func permuteColumns(_ W: Matrix<Double>, _ perm: [Int]) -> Matrix<Double> {
    var out = Matrix<Double>(zeros: W.rows, W.cols)
    for r in 0..<W.rows { for k in 0..<W.cols { out.data[r * W.cols + k] = W.data[r * W.cols + perm[k]] } }
    return out
}
