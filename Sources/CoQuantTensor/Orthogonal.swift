import COpenBLAS
import Foundation

// Seeded random orthogonal matrices (Haar measure), as the reference's `random_orthogonal_matrix`
// (COQUANT_RESQ.md §2.1 step 5): A ~ N(0, 1)^{n×n}, A = QR, Q ← Q·diag(sign(diag R)). The values differ from torch's
// (different generator); the distribution and the construction are the same.

extension SeededGenerator {
    /// `count` independent standard normal draws: Box–Muller on pairs of `nextDouble()` (both values of each pair are
    /// used, cosine first), so a given seed gives the same sequence on every machine.
    public mutating func nextGaussians(_ count: Int) -> [Double] {
        var out = [Double]()
        out.reserveCapacity(count + 1)
        while out.count < count {
            let u1 = 1 - nextDouble()           // (0, 1]: log is finite
            let u2 = nextDouble()
            let radius = (-2 * log(u1)).squareRoot(), angle = 2 * Double.pi * u2
            out.append(radius * cos(angle))
            out.append(radius * sin(angle))
        }
        out.removeLast(out.count - count)
        return out
    }
}

/// Q of the QR factorisation of a square A (dgeqrf + dorgqr), with the columns' signs fixed so that diag R > 0:
/// `Q·diag(sign(diag R))` (a zero diagonal entry keeps its column). Q is unique then, and Haar-distributed when A
/// is Gaussian.
public func orthogonalFactor(_ a: Matrix<Double>) throws -> Matrix<Double> {
    precondition(a.rows == a.cols, "orthogonalFactor needs a square matrix, got \(a.rows)×\(a.cols)")
    let n = a.rows
    var q = a
    var tau = [Double](repeating: 0, count: n)
    let info1 = q.data.withUnsafeMutableBufferPointer { p in
        tau.withUnsafeMutableBufferPointer { t in
            LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, Int32(n), Int32(n), p.baseAddress!, Int32(n), t.baseAddress!)
        }
    }
    guard info1 == 0 else { throw LinearAlgebraError(description: "dgeqrf failed (info \(info1))") }
    let signs: [Double] = (0..<n).map { q.data[$0 * n + $0] < 0 ? -1 : 1 }    // diag R
    let info2 = q.data.withUnsafeMutableBufferPointer { p in
        tau.withUnsafeMutableBufferPointer { t in
            LAPACKE_dorgqr(LAPACK_ROW_MAJOR, Int32(n), Int32(n), Int32(n), p.baseAddress!, Int32(n), t.baseAddress!)
        }
    }
    guard info2 == 0 else { throw LinearAlgebraError(description: "dorgqr failed (info \(info2))") }
    for i in 0..<n { for j in 0..<n { q.data[i * n + j] *= signs[j] } }
    return q
}

/// A random n×n orthogonal matrix drawn from `generator`: n² Gaussians filling A row by row, then
/// `orthogonalFactor(A)`.
public func randomOrthogonalMatrix(_ n: Int, generator: inout SeededGenerator) -> Matrix<Double> {
    precondition(n >= 1)
    let a = Matrix(rows: n, cols: n, data: generator.nextGaussians(n * n))
    // A Gaussian matrix is singular with probability 0, and QR never fails on finite input.
    return try! orthogonalFactor(a)
}

/// `randomOrthogonalMatrix(n, generator:)` with a fresh `SeededGenerator(seed:)`.
public func randomOrthogonalMatrix(_ n: Int, seed: UInt64) -> Matrix<Double> {
    var g = SeededGenerator(seed: seed)
    return randomOrthogonalMatrix(n, generator: &g)
}
