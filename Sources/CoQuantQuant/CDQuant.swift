import CoQuantTensor
import Foundation

// CDQuant (Nair & Suggala, arXiv 2406.17542): coordinate descent on the layer-wise loss, started from GPTQ's (or
// RTN's) codes, with the grids (scales, zeros, groups) fixed by that start (GPTQ_CDQUANT.md §3).
//
// Shapes: W [R, C] (rows = output channels), H_λ [C, C] (dead columns fixed, damped exactly as GPTQ did it),
// Ŵ [R, C] on the grid, g [C] = (ŵ − w) H_λ per row (the half-gradient; row-major, so g is a row of G = E·H_λ).
//
// Per row the loss is L = e H_λ eᵀ, e = ŵ − w. Moving coordinate i by δ changes it by exactly 2δ g_i + δ² H_ii
// (§3.1). The best move on coordinate i goes to the grid point nearest u_i = ŵ_i − g_i/H_ii; it lowers the loss by
// Δ_i = −δ_i(2g_i + δ_i H_ii) ≥ 0 (exactly 0 when δ_i = 0). After a move g += δ·H_λ[i, :].
//
// Variants:
//   greedy  every iteration takes the coordinate with the largest Δ_i (ties: lowest index): one O(C) scan, fused
//           with the O(C) update of g from the previous move (§3.2).
//   block   BCD (§3.5; the paper's details are unknown, this is the spec's reconstruction): columns split once
//           into blocks of k (coupled / contiguous / random); every iteration takes the best move among all
//           single-coordinate moves (the greedy scan) and, per block, the window {current, ⌊u⌋, ⌊u⌋ + 1}^k (in grid
//           steps, clamped) around the block optimum u_b = ŵ_b − H_bb⁻¹ g_b, each scored by its exact decrease
//           −(2δᵀg_b + δᵀH_bb δ) (greedy selection, §3.5). Blocks whose bound g_bᵀH_bb⁻¹g_b (less a lower bound on
//           the distance to the grid) cannot beat the best so far are skipped. With k = 1 it is greedy CD.
//   cyclic  passes over the columns in order 0..<C, moving each coordinate to its best grid point when that
//           lowers the loss (§3.6).
// Every variant stops a row at a 1-opt point (no move, of those it considers, lowers the loss by more than
// `tolerance`·L_row(start)) or when the row has used its budget. The loss never increases: every accepted move
// lowers it by its exact (up to rounding) Δ > 0.
//
// Rows are independent and share H_λ read-only: chunks of rows go to both cores (each with single-threaded BLAS
// for its G₀ = E·H_λ GEMM), like GPTQ's row split.

public struct CDQuant: WeightSolver {
    public enum Initialization: Sendable, Equatable {
        /// GPTQ's output (the spec's recommended default): then L_CD ≤ L_GPTQ on the shared H_λ.
        case gptq
        /// Round-to-nearest on the original W (GPTQ_CDQUANT.md §2.7); H_λ is damped with the same percdamp ladder.
        case rtn
    }

    /// How BCD splits the columns into blocks (once, before the descent).
    public enum BlockPartition: Sendable, Equatable {
        /// Grow each block from the lowest unassigned column by adding the unassigned column with the largest summed
        /// coupling |H_ij|/√(H_ii H_jj) to the block's members (§3.5: blocks should capture strong couplings).
        case coupled
        /// Consecutive columns: [0, k), [k, 2k), …
        case contiguous
        /// A seeded random permutation cut into consecutive blocks.
        case random(seed: UInt64)
    }

    public enum Variant: Sendable, Equatable {
        case greedy
        /// Block coordinate descent with blocks of `size` columns (1…6: the window has up to 3^size candidates).
        case block(size: Int, partition: BlockPartition = .coupled)
        case cyclic
    }

    /// The per-row iteration budget T.
    public enum Budget: Sendable, Equatable {
        /// T = ⌈τ·C⌉ (the spec's default: τ = 1).
        case perInput(Double)
        /// T = n.
        case iterations(Int)
    }

    public var variant: Variant
    public var initialization: Initialization
    /// Iterations per row: greedy moves, BCD block moves, or cyclic coordinate changes.
    public var budget: Budget
    /// A move is taken only if it lowers the row's loss by more than tolerance · (the row's starting loss), so
    /// rounding noise (two grid points equally far from u_i) cannot make a row oscillate. 0 allowed.
    public var tolerance: Double
    /// The GPTQ run of the initialisation, and the source of H_λ for both starts (percDamp, maxPercDamp, act-order,
    /// groups, block size).
    public var gptq: GPTQ

    public init(variant: Variant = .greedy, initialization: Initialization = .gptq, budget: Budget = .perInput(1),
                tolerance: Double = 1e-12, gptq: GPTQ = GPTQ()) {
        self.variant = variant
        self.initialization = initialization
        self.budget = budget
        self.tolerance = tolerance
        self.gptq = gptq
    }

    /// The budget T for C columns.
    func iterationBudget(columns C: Int) throws -> Int {
        switch budget {
        case .perInput(let tau):
            guard tau.isFinite, tau >= 0, tau * Double(C) < Double(Int32.max) else {
                throw QuantError.invalidParameter("CDQuant needs a finite budget multiple τ ≥ 0 (got \(tau))")
            }
            return Int((tau * Double(C)).rounded(.up))
        case .iterations(let n):
            guard n >= 0 else { throw QuantError.invalidParameter("CDQuant needs an iteration budget ≥ 0 (got \(n))") }
            return n
        }
    }

    public func solve(W: Matrix<Double>, H hessian: Matrix<Double>?, grid: QuantGrid) throws -> QuantizedWeight {
        guard let H = hessian else { throw QuantError.missingHessian }
        let R = W.rows, C = W.cols
        guard H.rows == C && H.cols == C else {
            throw QuantError.shapeMismatch("W is \(R)×\(C) but H is \(H.rows)×\(H.cols)")
        }
        guard tolerance.isFinite, tolerance >= 0 else {
            throw QuantError.invalidParameter("CDQuant needs a tolerance ≥ 0 (got \(tolerance))")
        }
        if case .block(let k, _) = variant, !(1...6).contains(k) {
            throw QuantError.invalidParameter("BCD block size must be in 1…6 (got \(k))")
        }
        let T = try iterationBudget(columns: C)
        guard H.data.allSatisfy({ $0.isFinite }) else { throw QuantError.nonFiniteHessian }
        guard W.data.allSatisfy({ $0.isFinite }) else {
            throw QuantError.invalidParameter("W has NaN or infinite entries")
        }
        if gptq.columnGrids == nil { _ = try grid.weightGroupSize(columns: C) }

        // The start and the λ it was (or would have been) solved with.
        var hFixed = H
        for j in 0..<C where hFixed[j, j] == 0 { hFixed[j, j] = 1 }
        var start: QuantizedWeight
        switch initialization {
        case .gptq:
            start = try gptq.solve(W: W, H: H, grid: grid)
        case .rtn:
            guard gptq.percDamp >= 0 else {
                throw QuantError.invalidParameter("CDQuant needs percDamp ≥ 0 (got \(gptq.percDamp))")
            }
            // The same ladder GPTQ climbs, so that H_λ (and the losses) are those a GPTQ run would use.
            let f = try gptq.dampedInverseFactor(hFixed)
            start = try RTN(columnGrids: gptq.columnGrids).solve(W: W, grid: grid)
            start.dampingUsed = f.percDamp
            start.damp = f.damp
            start.dampingEscalations = f.escalations
        }
        guard let damp = start.damp else { throw QuantError.invalidParameter("the initialisation reported no damping") }
        // H_λ exactly as GPTQ built it (original column order; λ is permutation-invariant), and W₀ = W with the
        // columns of dead inputs zeroed (GPTQ step 3), the objective both share.
        var hl = hFixed
        for j in 0..<C { hl[j, j] += damp }
        var w0 = W
        for j in 0..<C where H[j, j] == 0 { for r in 0..<R { w0[r, j] = 0 } }
        // The moves step codes on the integer lattice k = code − z. A grid with a min (Q4_1, Q5_1, Q2_K, Q4_K, Q5_K:
        // z = m/s fractional) is that lattice shifted: ŵ = s·(code − ⌊z⌉) + b with b = −s·(z − ⌊z⌉) per (row, column).
        // Solving Ŵ − B against W₀ − B has the same loss and gradient, on integer zero points ⌊z⌉; B is added back.
        var zeros = start.zeros, values = start.values
        var bias: [Double]?
        if zeros.data.contains(where: { $0 != $0.rounded() }) {
            let G = zeros.cols
            var b = [Double](repeating: 0, count: R * C)
            for r in 0..<R {
                for c in 0..<C {
                    let k = r * G + start.groupIndex[c], z = zeros.data[k]
                    b[r * C + c] = -start.scales.data[k] * (z - z.rounded())
                }
            }
            for i in b.indices { w0.data[i] -= b[i]; values.data[i] -= b[i] }
            zeros.data = zeros.data.map { $0.rounded() }
            bias = b
        }

        let blocks: BlockLayout?
        if case .block(let k, let partition) = variant { blocks = BlockLayout(H: hl, size: k, partition: partition) } else { blocks = nil }

        var codes = start.codes
        var initial = [Double](repeating: 0, count: R), finalRow = [Double](repeating: 0, count: R)
        var rowMoves = [Int](repeating: 0, count: R), rowConverged = [Bool](repeating: false, count: R)
        let maxq = Double(grid.maxq)
        let G = start.scales.cols

        hl.data.withUnsafeBufferPointer { phBuf in
        w0.data.withUnsafeBufferPointer { pwBuf in
        values.data.withUnsafeMutableBufferPointer { pqBuf in
        codes.withUnsafeMutableBufferPointer { pcBuf in
        start.scales.data.withUnsafeBufferPointer { psBuf in
        zeros.data.withUnsafeBufferPointer { pzBuf in
        start.groupIndex.withUnsafeBufferPointer { pgiBuf in
        initial.withUnsafeMutableBufferPointer { pinit in
        finalRow.withUnsafeMutableBufferPointer { pfinal in
        rowMoves.withUnsafeMutableBufferPointer { pmoves in
        rowConverged.withUnsafeMutableBufferPointer { pconv in
            let ph = phBuf.baseAddress!, pw = pwBuf.baseAddress!, pq = pqBuf.baseAddress!, pc = pcBuf.baseAddress!
            let ps = psBuf.baseAddress!, pz = pzBuf.baseAddress!, pgi = pgiBuf.baseAddress!
            let hd = UnsafeMutablePointer<Double>.allocate(capacity: C)
            let rh = UnsafeMutablePointer<Double>.allocate(capacity: C)
            defer { hd.deallocate(); rh.deallocate() }
            for i in 0..<C { hd[i] = ph[i * C + i]; rh[i] = 1 / hd[i] }
            let shared = SharedProblem(C: C, H: ph, hd: hd, rh: rh)

            // Chunks of rows, more than workers, so rows that stop early balance out across the two cores.
            let workers = R * C * C >= 1 << 18 && R >= 2 ? min(forwardWorkers, R) : 1
            let chunks = workers == 1 ? 1 : min(R, 8 * workers)
            withSingleThreadedBLAS {
                parallelFor(chunks) { ch in
                    let r0 = R * ch / chunks, r1 = R * (ch + 1) / chunks, n = r1 - r0
                    guard n > 0 else { return }
                    let e = UnsafeMutablePointer<Double>.allocate(capacity: n * C)
                    let g = UnsafeMutablePointer<Double>.allocate(capacity: n * C)
                    let scratch = UnsafeMutablePointer<Double>.allocate(capacity: 4 * C)
                    let bcd = blocks.map { BlockScratch(size: $0.size) }
                    defer { e.deallocate(); g.deallocate(); scratch.deallocate(); bcd?.deallocate() }
                    for k in 0..<(n * C) { e[k] = pq[r0 * C + k] - pw[r0 * C + k] }
                    Double.gemm(false, false, n, C, C, 1, e, C, ph, C, 0, g, C)     // G₀ = (Ŵ₀ − W₀) H_λ
                    for r in r0..<r1 {
                        let row = RowState(q: pq + r * C, code: pc + r * C, g: g + (r - r0) * C, sc: scratch,
                                           rs: scratch + C, lo: scratch + 2 * C, hi: scratch + 3 * C)
                        // This row's grid per column, fixed by the start: k = code − z ∈ [−z, maxq − z], ŵ = s·k.
                        for c in 0..<C {
                            let s = ps[r * G + pgi[c]], z = pz[r * G + pgi[c]]
                            let top = start.groupMaxq.map { Double($0[pgi[c]]) } ?? maxq
                            row.sc[c] = s; row.rs[c] = 1 / s; row.lo[c] = -z; row.hi[c] = top - z
                        }
                        var loss = 0.0
                        let er = e + (r - r0) * C
                        for c in 0..<C { loss += er[c] * row.g[c] }
                        pinit[r] = loss
                        let threshold = tolerance * max(loss, 0)
                        let result: (moves: Int, converged: Bool)
                        switch variant {
                        case .greedy: result = greedyRow(shared, row, uniform: G == 1, budget: T, threshold: threshold)
                        case .cyclic: result = cyclicRow(shared, row, budget: T, threshold: threshold)
                        case .block: result = blockRow(shared, blocks!, bcd!, row, uniform: G == 1, budget: T, threshold: threshold)
                        }
                        // The final loss from the maintained g: e·g with e = ŵ − w₀.
                        var lf = 0.0
                        for c in 0..<C { lf += (row.q[c] - pw[r * C + c]) * row.g[c] }
                        pfinal[r] = lf
                        pmoves[r] = result.moves
                        pconv[r] = result.converged
                    }
                }
            }
        }}}}}}}}}}}

        if let bias { for i in bias.indices { values.data[i] += bias[i] } }
        var out = start
        out.values = values
        out.codes = codes
        out.initialLoss = initial.reduce(0, +)
        out.initialValues = start.values
        out.finalLoss = finalRow.reduce(0, +)
        out.errorSum = out.finalLoss! / 2       // GPTQ's convention: ½ tr((W₀ − Ŵ) H_λ (W₀ − Ŵ)ᵀ)
        out.moves = rowMoves.reduce(0, +)
        out.rowsAtLocalOptimum = rowConverged.lazy.filter { $0 }.count
        return out
    }
}

extension CDQuant.Variant: CustomStringConvertible {
    public var description: String {
        switch self {
        case .greedy: return "greedy"
        case .cyclic: return "cyclic"
        case .block(let k, .coupled): return "BCD(\(k), coupled)"
        case .block(let k, .contiguous): return "BCD(\(k), contiguous)"
        case .block(let k, .random(let seed)): return "BCD(\(k), random \(seed))"
        }
    }
}

// MARK: - Row kernels

/// Read-only data every row shares.
struct SharedProblem {
    let C: Int
    /// H_λ [C, C], row-major (symmetric).
    let H: UnsafePointer<Double>
    /// diag H_λ and its reciprocal.
    let hd: UnsafePointer<Double>
    let rh: UnsafePointer<Double>
}

/// One row's working state. q and code point into the output; g, sc… into the worker's scratch.
struct RowState {
    let q: UnsafeMutablePointer<Double>
    let code: UnsafeMutablePointer<Int32>
    let g: UnsafeMutablePointer<Double>
    /// Per column: scale s, 1/s, and the range of k = code − z: lo = −z, hi = maxq − z.
    let sc: UnsafeMutablePointer<Double>
    let rs: UnsafeMutablePointer<Double>
    let lo: UnsafeMutablePointer<Double>
    let hi: UnsafeMutablePointer<Double>
}

@inline(__always) private func load4(_ p: UnsafePointer<Double>, _ j: Int) -> SIMD4<Double> {
    UnsafeRawPointer(p + j).loadUnaligned(as: SIMD4<Double>.self)
}

@inline(__always) private func load4(_ p: UnsafeMutablePointer<Double>, _ j: Int) -> SIMD4<Double> {
    UnsafeRawPointer(p + j).loadUnaligned(as: SIMD4<Double>.self)
}

@inline(__always) private func store4(_ v: SIMD4<Double>, _ p: UnsafeMutablePointer<Double>, _ j: Int) {
    UnsafeMutableRawPointer(p + j).storeBytes(of: v, as: SIMD4<Double>.self)
}

/// y += a·x over n elements.
@inline(__always) private func axpy(_ n: Int, _ a: Double, _ x: UnsafePointer<Double>, _ y: UnsafeMutablePointer<Double>) {
    let av = SIMD4<Double>(repeating: a)
    var j = 0
    while j + 4 <= n { store4(load4(y, j) + av * load4(x, j), y, j); j += 4 }
    while j < n { y[j] += a * x[j]; j += 1 }
}

/// The best move of coordinate i alone: k = round(clamp((ŵ_i − g_i/H_ii)/s, −z, maxq − z)) is the grid step nearest
/// u_i (clamping before rounding equals GPTQ's clamp after it, the bounds being integers; 1/s multiplies instead of
/// dividing, which can only flip exact ties, of equal loss). Returns k, δ = s·k − ŵ_i and the decrease
/// −δ(2g_i + δ H_ii). The SIMD scan below computes the same expressions lane-wise.
@inline(__always) private func bestSingle(_ s: SharedProblem, _ r: RowState, _ i: Int) -> (k: Double, delta: Double, gain: Double) {
    let gi = r.g[i], qi = r.q[i]
    let x = min(max((qi - gi * s.rh[i]) * r.rs[i], r.lo[i]), r.hi[i])
    let k = x.rounded(.toNearestOrEven)
    let d = r.sc[i] * k - qi
    return (k, d, d * (-2 * gi - d * s.hd[i]))
}

/// The grid of a row's columns, four lanes at a time: per-column arrays (groups), or one grid for the whole row
/// (per channel), which saves four of the scan's nine memory streams.
protocol RowGridLanes {
    func scale(_ j: Int) -> SIMD4<Double>
    func inverseScale(_ j: Int) -> SIMD4<Double>
    func low(_ j: Int) -> SIMD4<Double>
    func high(_ j: Int) -> SIMD4<Double>
}

struct ColumnGridLanes: RowGridLanes {
    let r: RowState
    @inline(__always) func scale(_ j: Int) -> SIMD4<Double> { load4(r.sc, j) }
    @inline(__always) func inverseScale(_ j: Int) -> SIMD4<Double> { load4(r.rs, j) }
    @inline(__always) func low(_ j: Int) -> SIMD4<Double> { load4(r.lo, j) }
    @inline(__always) func high(_ j: Int) -> SIMD4<Double> { load4(r.hi, j) }
}

struct UniformGridLanes: RowGridLanes {
    let s, rs, lo, hi: SIMD4<Double>
    init(_ r: RowState) {
        s = SIMD4(repeating: r.sc[0]); rs = SIMD4(repeating: r.rs[0])
        lo = SIMD4(repeating: r.lo[0]); hi = SIMD4(repeating: r.hi[0])
    }
    @inline(__always) func scale(_ j: Int) -> SIMD4<Double> { s }
    @inline(__always) func inverseScale(_ j: Int) -> SIMD4<Double> { rs }
    @inline(__always) func low(_ j: Int) -> SIMD4<Double> { lo }
    @inline(__always) func high(_ j: Int) -> SIMD4<Double> { hi }
}

/// One O(C) pass over a row: first g += δ·H_λ[i, :] for a pending move (δ = 0: none), then the best single-coordinate
/// move, the one with the largest decrease > threshold, ties to the lowest index. Returns index −1 if there is none.
@inline(__always)
private func scanBestSingle(_ s: SharedProblem, _ r: RowState, uniform: Bool, pendingRow: UnsafePointer<Double>,
                            pendingDelta: Double, threshold: Double) -> (gain: Double, index: Int, k: Double) {
    uniform ? scanBestSingle(s, r, UniformGridLanes(r), pendingRow, pendingDelta, threshold)
            : scanBestSingle(s, r, ColumnGridLanes(r: r), pendingRow, pendingDelta, threshold)
}

@inline(__always)
private func scanBestSingle<L: RowGridLanes>(_ s: SharedProblem, _ r: RowState, _ grid: L, _ pendingRow: UnsafePointer<Double>,
                                             _ pendingDelta: Double, _ threshold: Double) -> (gain: Double, index: Int, k: Double) {
    let C = s.C, vec = C & ~3
    var bestGain = SIMD4<Double>(repeating: threshold)
    var bestIndex = SIMD4<Int64>(repeating: -1)
    var bestK = SIMD4<Double>(repeating: 0)
    var index = SIMD4<Int64>(0, 1, 2, 3)
    let pd = SIMD4<Double>(repeating: pendingDelta)
    var j = 0
    while j < vec {
        let gv = load4(r.g, j) + pd * load4(pendingRow, j)
        store4(gv, r.g, j)
        let qv = load4(r.q, j)
        var x = (qv - gv * load4(s.rh, j)) * grid.inverseScale(j)
        let hi = grid.high(j), lo = grid.low(j)
        x.replace(with: hi, where: x .> hi)            // min/max as compare + blend (pointwiseMin is not inlined)
        x.replace(with: lo, where: x .< lo)
        let k = x.rounded(.toNearestOrEven)
        let d = grid.scale(j) * k - qv
        let gain = d * (-2 * gv - d * load4(s.hd, j))
        let better = gain .> bestGain
        bestGain.replace(with: gain, where: better)
        bestIndex.replace(with: index, where: better)
        bestK.replace(with: k, where: better)
        index &+= 4
        j += 4
    }
    var best = threshold, bi = -1, bk = 0.0
    for l in 0..<4 where bestIndex[l] >= 0 {
        let i = Int(bestIndex[l])
        if bestGain[l] > best || (bestGain[l] == best && i < bi) { best = bestGain[l]; bi = i; bk = bestK[l] }
    }
    while j < C {
        r.g[j] += pendingDelta * pendingRow[j]
        let m = bestSingle(s, r, j)
        if m.gain > best { best = m.gain; bi = j; bk = m.k }
        j += 1
    }
    return (best, bi, bk)
}

/// Greedy CD on one row: T times, take the coordinate with the largest decrease (> threshold), ties to the lowest
/// index. Each scan also applies the previous move's g += δ·H_λ[i, :], so one pass over C per move.
func greedyRow(_ s: SharedProblem, _ r: RowState, uniform: Bool, budget T: Int, threshold: Double) -> (moves: Int, converged: Bool) {
    var pendingRow = s.H                 // δ = 0 on the first scan: g stays as it is
    var pendingDelta = 0.0
    var moves = 0, converged = false
    while moves < T {
        let (_, bi, bk) = scanBestSingle(s, r, uniform: uniform, pendingRow: pendingRow, pendingDelta: pendingDelta, threshold: threshold)
        pendingDelta = 0
        guard bi >= 0 else { converged = true; break }
        let v = r.sc[bi] * bk
        pendingDelta = v - r.q[bi]
        pendingRow = s.H + bi * s.C
        r.q[bi] = v
        r.code[bi] = Int32(bk - r.lo[bi])
        moves += 1
    }
    if pendingDelta != 0 { axpy(s.C, pendingDelta, pendingRow, r.g) }
    return (moves, converged)
}

/// Cyclic CD on one row: passes over 0..<C, each coordinate moved to its best grid point when that lowers the loss
/// by more than the threshold; stops after a pass with no move (1-opt) or after T moves.
func cyclicRow(_ s: SharedProblem, _ r: RowState, budget T: Int, threshold: Double) -> (moves: Int, converged: Bool) {
    let C = s.C
    var moves = 0
    while moves < T {
        var changed = false
        for i in 0..<C {
            let m = bestSingle(s, r, i)
            guard m.gain > threshold else { continue }
            r.q[i] = r.sc[i] * m.k
            r.code[i] = Int32(m.k - r.lo[i])
            axpy(C, m.delta, s.H + i * C, r.g)
            moves += 1
            changed = true
            if moves == T { return (moves, false) }
        }
        if !changed { return (moves, true) }
    }
    return (moves, false)
}

// MARK: - Block coordinate descent

/// BCD's fixed partition and, per block, H_bb and H_bb⁻¹ (k×k slots, row-major).
final class BlockLayout: @unchecked Sendable {
    let size: Int
    /// Block b holds columns[starts[b] ..< starts[b + 1]].
    let starts: [Int]
    let columns: [Int]
    let hbb: [Double]
    let hinv: [Double]
    /// false where H_bb did not factor (numerically): that block only tries single-coordinate moves.
    let invertible: [Bool]
    /// A lower bound on λ_min(H_bb): 1/‖H_bb⁻¹‖_F (λ_max(H_bb⁻¹) ≤ its Frobenius norm), shrunk by 1e-9 for rounding.
    let minEigenvalue: [Double]

    init(H: Matrix<Double>, size k: Int, partition: CDQuant.BlockPartition) {
        let C = H.rows
        size = k
        var cols: [Int]
        switch partition {
        case .contiguous:
            cols = Array(0..<C)
        case .random(let seed):
            var rng = SeededGenerator(seed: seed)
            cols = Array(0..<C)
            cols.shuffle(using: &rng)
        case .coupled:
            cols = BlockLayout.coupledOrder(H, k)
        }
        columns = cols
        starts = Array(stride(from: 0, to: C, by: k)) + [C]
        let nb = starts.count - 1
        var hbb = [Double](repeating: 0, count: nb * k * k), hinv = hbb
        var ok = [Bool](repeating: true, count: nb)
        for b in 0..<nb {
            let m = starts[b + 1] - starts[b], base = b * k * k
            for a in 0..<m { for c in 0..<m { hbb[base + a * k + c] = H[cols[starts[b] + a], cols[starts[b] + c]] } }
            ok[b] = BlockLayout.invertSPD(m, k, Array(hbb[base..<(base + k * k)]), into: &hinv, at: base)
        }
        self.hbb = hbb
        self.hinv = hinv
        invertible = ok
        minEigenvalue = (0..<nb).map { b in
            guard ok[b] else { return 0 }
            let f = hinv[(b * k * k)..<((b + 1) * k * k)].reduce(0) { $0 + $1 * $1 }.squareRoot()
            return (1 - 1e-9) / f
        }
    }

    /// Columns in block order: each block starts at the lowest unassigned column and grows by the unassigned column
    /// with the largest Σ over the block's members of |H_ij|/√(H_ii H_jj) (ties: lowest index). O(C²).
    static func coupledOrder(_ H: Matrix<Double>, _ k: Int) -> [Int] {
        let C = H.rows
        var assigned = [Bool](repeating: false, count: C)
        var score = [Double](repeating: 0, count: C)
        let d = (0..<C).map { H[$0, $0].squareRoot() }
        var order: [Int] = []
        order.reserveCapacity(C)
        var next = 0
        while order.count < C {
            while assigned[next] { next += 1 }
            var member = next
            assigned[member] = true
            order.append(member)
            for j in 0..<C { score[j] = 0 }
            var count = 1
            while count < k && order.count < C {
                var best = -1.0, bj = -1
                for j in 0..<C where !assigned[j] {
                    score[j] += abs(H[member, j]) / (d[member] * d[j])
                    if score[j] > best { best = score[j]; bj = j }
                }
                member = bj
                assigned[member] = true
                order.append(member)
                count += 1
            }
        }
        return order
    }

    /// Inverse of the leading m×m block of an SPD matrix stored with row stride k, through Cholesky; false if a pivot
    /// is not positive.
    static func invertSPD(_ m: Int, _ k: Int, _ a: [Double], into out: inout [Double], at base: Int) -> Bool {
        var l = [Double](repeating: 0, count: m * m)
        for i in 0..<m {
            for j in 0...i {
                var s = a[i * k + j]
                for p in 0..<j { s -= l[i * m + p] * l[j * m + p] }
                if i == j {
                    guard s > 0 else { return false }
                    l[i * m + i] = s.squareRoot()
                } else {
                    l[i * m + j] = s / l[j * m + j]
                }
            }
        }
        // L⁻¹ (lower), then A⁻¹ = L⁻ᵀ L⁻¹.
        var li = [Double](repeating: 0, count: m * m)
        for i in 0..<m {
            li[i * m + i] = 1 / l[i * m + i]
            for j in 0..<i {
                var s = 0.0
                for p in j..<i { s -= l[i * m + p] * li[p * m + j] }
                li[i * m + j] = s / l[i * m + i]
            }
        }
        for i in 0..<m {
            for j in 0..<m {
                var s = 0.0
                for p in max(i, j)..<m { s += li[p * m + i] * li[p * m + j] }
                out[base + i * k + j] = s
            }
        }
        return true
    }
}

/// A worker's BCD scratch: per block coordinate its gradient, value, current step, up to 3 candidate steps, the
/// combination being scored and the best one so far.
struct BlockScratch {
    let g, q, kc, cand, combo, best, delta: UnsafeMutablePointer<Double>
    let count, pick: UnsafeMutablePointer<Int>

    init(size k: Int) {
        g = .allocate(capacity: k); q = .allocate(capacity: k); kc = .allocate(capacity: k)
        cand = .allocate(capacity: 3 * k); combo = .allocate(capacity: k); best = .allocate(capacity: k)
        delta = .allocate(capacity: k)
        count = .allocate(capacity: k); pick = .allocate(capacity: k)
    }

    func deallocate() {
        for p in [g, q, kc, cand, combo, best, delta] { p.deallocate() }
        count.deallocate(); pick.deallocate()
    }
}

/// BCD on one row: T times, take the best move among all single-coordinate moves (found by the greedy scan) and all
/// blocks' window combinations (a window move must be strictly better; ties then go to the lowest block and the
/// first combination in odometer order), apply it, update g by one axpy per changed coordinate.
func blockRow(_ s: SharedProblem, _ layout: BlockLayout, _ w: BlockScratch, _ r: RowState, uniform: Bool, budget T: Int,
              threshold: Double) -> (moves: Int, converged: Bool) {
    let C = s.C, K = layout.size, nb = layout.starts.count - 1
    var moves = 0, iterations = 0
    return layout.columns.withUnsafeBufferPointer { cols in
        layout.hbb.withUnsafeBufferPointer { hbb in
        layout.hinv.withUnsafeBufferPointer { hinv in
        layout.starts.withUnsafeBufferPointer { starts in
        layout.invertible.withUnsafeBufferPointer { invertible in
        layout.minEigenvalue.withUnsafeBufferPointer { minEigenvalue in
                while iterations < T {
                    // The best single-coordinate move first (so a BCD fixed point is also 1-opt), by the SIMD scan;
                    // it also sets the bar the block windows must beat.
                    let single = scanBestSingle(s, r, uniform: uniform, pendingRow: s.H, pendingDelta: 0, threshold: threshold)
                    var best = single.gain, bestBlock = -1
                    for b in 0..<nb {
                        let base = starts[b], m = starts[b + 1] - base, hb = b * K * K
                        guard m > 1, invertible[b] else { continue }
                        for a in 0..<m { w.g[a] = r.g[cols[base + a]] }
                        // No move of the block lowers the loss by more than the unconstrained optimum does,
                        // g_bᵀ H_bb⁻¹ g_b: skip blocks that cannot beat the best so far (the margin covers rounding,
                        // so the choice is the one the full scan makes). w.delta holds H_bb⁻¹ g_b for the window.
                        var bound = 0.0
                        for a in 0..<m {
                            var h = 0.0
                            for c in 0..<m { h += hinv[hb + a * K + c] * w.g[c] }
                            w.delta[a] = h
                            bound += h * w.g[a]
                        }
                        if bound * (1 + 1e-9) < best { continue }
                        // Tighter: a grid move δ gains bound − ‖δ − δ*‖²_{H_bb}, δ* = −H_bb⁻¹ g_b, and that norm is at
                        // least λ_min(H_bb)·Σ_a dist_a², dist_a = the distance from u_a to its nearest grid point.
                        var far = 0.0
                        for a in 0..<m {
                            let i = cols[base + a]
                            let x = (r.q[i] - w.delta[a]) * r.rs[i]
                            let dist = r.sc[i] * (x - min(max(x.rounded(.toNearestOrEven), r.lo[i]), r.hi[i]))
                            far += dist * dist
                        }
                        if (bound - minEigenvalue[b] * far) * (1 + 1e-9) + 1e-12 * bound < best { continue }
                        for a in 0..<m {
                            let i = cols[base + a]
                            w.q[a] = r.q[i]; w.kc[a] = Double(r.code[i]) + r.lo[i]
                        }
                        // Window around the block optimum u_b = q_b − H_bb⁻¹ g_b, per coordinate the distinct steps
                        // among {current, ⌊u/s⌋, ⌊u/s⌋ + 1} clamped to the grid.
                        for a in 0..<m {
                            let i = cols[base + a]
                            let x = min(max((w.q[a] - w.delta[a]) * r.rs[i], r.lo[i]), r.hi[i])
                            let f = x.rounded(.down), f1 = min(f + 1, r.hi[i])
                            let c0 = w.kc[a]
                            w.cand[3 * a] = c0
                            var n = 1
                            if f != c0 { w.cand[3 * a + n] = f; n += 1 }
                            if f1 != c0 && f1 != f { w.cand[3 * a + n] = f1; n += 1 }
                            w.count[a] = n
                            w.pick[a] = 0
                        }
                        // Odometer over the candidate product; gain = −(2 δᵀ g_b + δᵀ H_bb δ).
                        while true {
                            var lin = 0.0
                            for a in 0..<m {
                                let k = w.cand[3 * a + w.pick[a]]
                                w.combo[a] = k
                                w.delta[a] = r.sc[cols[base + a]] * k - w.q[a]
                                lin += w.delta[a] * w.g[a]
                            }
                            var quad = 0.0
                            for a in 0..<m {
                                var t = 0.0
                                for c in 0..<m { t += hbb[hb + a * K + c] * w.delta[c] }
                                quad += w.delta[a] * t
                            }
                            let gain = -(2 * lin + quad)
                            if gain > best {
                                best = gain; bestBlock = b
                                for c in 0..<m { w.best[c] = w.combo[c] }
                            }
                            var a = 0
                            while a < m {
                                w.pick[a] += 1
                                if w.pick[a] < w.count[a] { break }
                                w.pick[a] = 0
                                a += 1
                            }
                            if a == m { break }
                        }
                    }
                    if bestBlock < 0 {
                        guard single.index >= 0 else { return (moves, true) }
                        let i = single.index, v = r.sc[i] * single.k, d = v - r.q[i]
                        r.q[i] = v
                        r.code[i] = Int32(single.k - r.lo[i])
                        axpy(C, d, s.H + i * C, r.g)
                        moves += 1
                    } else {
                        let base = starts[bestBlock], m = starts[bestBlock + 1] - base
                        for a in 0..<m {
                            let i = cols[base + a], v = r.sc[i] * w.best[a], d = v - r.q[i]
                            guard d != 0 else { continue }
                            r.q[i] = v
                            r.code[i] = Int32(w.best[a] - r.lo[i])
                            axpy(C, d, s.H + i * C, r.g)
                            moves += 1
                        }
                    }
                    iterations += 1
                }
                return (moves, false)
        }}}}
        }
    }
}
