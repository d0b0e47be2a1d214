import Foundation
import XCTest
@testable import CoQuantTensor

final class LinearAlgebraTests: XCTestCase {
    func random(_ r: Int, _ c: Int, seed: UInt64) -> Matrix<Double> {
        var g = SeededGenerator(seed: seed)
        return Matrix(rows: r, cols: c, data: (0..<(r * c)).map { _ in g.nextDouble() * 2 - 1 })
    }

    func spd(_ n: Int, seed: UInt64) -> Matrix<Double> {
        let x = random(3 * n, n, seed: seed)
        var a = matmul(x, transA: true, x)
        for i in 0..<n { a[i, i] += 0.1 }
        return a
    }

    func testGEMMHandChecked() {
        // [[1,2,3],[4,5,6]] · [[7,8],[9,10],[11,12]] = [[58,64],[139,154]]
        let a = Matrix<Float>(rows: 2, cols: 3, data: [1, 2, 3, 4, 5, 6])
        let b = Matrix<Float>(rows: 3, cols: 2, data: [7, 8, 9, 10, 11, 12])
        XCTAssertEqual((a * b).data, [58, 64, 139, 154])
        XCTAssertEqual(matmul(a, transA: false, b.transposed, transB: true).data, [58, 64, 139, 154])
        XCTAssertEqual(matmul(a.transposed, transA: true, b).data, [58, 64, 139, 154])
        let ad = Matrix<Double>(rows: 2, cols: 3, data: [1, 2, 3, 4, 5, 6])
        // AᵀA for the same A, by hand: [[17,22,27],[22,29,36],[27,36,45]]
        XCTAssertEqual(matmul(ad, transA: true, ad).data, [17, 22, 27, 22, 29, 36, 27, 36, 45])
        var c = Matrix<Double>(zeros: 3, 3)
        syrkAccumulate(ad, into: &c)
        syrkAccumulate(ad, alpha: 2, into: &c)
        XCTAssertEqual(c.data, [17, 22, 27, 22, 29, 36, 27, 36, 45].map { 3 * $0 })
    }

    /// The tests' tolerance checks go through maxAbsDifference: a NaN anywhere must make it NaN (so `< tol` fails).
    func testMaxAbsDifferenceKeepsNaN() {
        let a = Matrix<Double>(rows: 1, cols: 3, data: [1, 2, 3])
        XCTAssertEqual(a.maxAbsDifference(Matrix(rows: 1, cols: 3, data: [1, 2.5, 2])), 1)
        XCTAssertTrue(a.maxAbsDifference(Matrix(rows: 1, cols: 3, data: [1, .nan, 3])).isNaN)
        XCTAssertTrue(a.maxAbsDifference(Matrix(rows: 1, cols: 3, data: [.nan, 2, 9])).isNaN)
    }

    func testCholeskyAndInverses() throws {
        let a = Matrix<Double>(rows: 2, cols: 2, data: [4, 2, 2, 3])   // L = [[2,0],[1,√2]]
        let l = try cholesky(a)
        XCTAssertEqual(l[0, 0], 2, accuracy: 1e-15)
        XCTAssertEqual(l[1, 0], 1, accuracy: 1e-15)
        XCTAssertEqual(l[1, 1], 2.0.squareRoot(), accuracy: 1e-15)
        XCTAssertEqual(l[0, 1], 0)
        let n = 40
        let m = spd(n, seed: 1)
        let u = try cholesky(m, upper: true)
        XCTAssertLessThan(matmul(u, transA: true, u).maxAbsDifference(m), 1e-12)
        XCTAssertLessThan((try choleskyInverse(m) * m).maxAbsDifference(.identity(n)), 1e-10)
        let uInv = try triangularInverse(u, upper: true)
        XCTAssertLessThan((uInv * u).maxAbsDifference(.identity(n)), 1e-10)
        for i in 0..<n { for j in 0..<i { XCTAssertEqual(uInv[i, j], 0) } }
        XCTAssertThrowsError(try cholesky(Matrix(rows: 2, cols: 2, data: [1, 2, 2, 1])))
    }

    func testSymmetricEigen() throws {
        let (w2, _) = try symmetricEigen(Matrix(rows: 2, cols: 2, data: [2, 1, 1, 2]))
        XCTAssertEqual(w2[0], 1, accuracy: 1e-14)
        XCTAssertEqual(w2[1], 3, accuracy: 1e-14)
        let n = 50
        let a = spd(n, seed: 2)
        let (w, v) = try symmetricEigen(a)
        for i in 1..<n { XCTAssertLessThanOrEqual(w[i - 1], w[i]) }
        XCTAssertLessThan(matmul(v, transA: true, v).maxAbsDifference(.identity(n)), 1e-12)
        var vl = v
        for i in 0..<n { for j in 0..<n { vl[i, j] *= w[j] } }
        XCTAssertLessThan(matmul(vl, v, transB: true).maxAbsDifference(a), 1e-10)
        // Column j really is the eigenvector of w[j]: A v_j = w_j v_j.
        let av = a * v
        for i in 0..<n { XCTAssertEqual(av[i, 0], w[0] * v[i, 0], accuracy: 1e-10) }
    }
}

final class KernelTests: XCTestCase {
    func testExp8Accuracy() {
        for x0 in stride(from: -80.0, through: 80.0, by: 0.37) {
            let x = SIMD8<Float>((0..<8).map { Float(x0) + Float($0) * 0.041 })
            let e = exp8(x)
            for i in 0..<8 {
                let ref = exp(Double(x[i]))
                XCTAssertEqual(Double(e[i]), ref, accuracy: 4e-7 * ref, "exp(\(x[i]))")
            }
        }
        XCTAssertEqual(exp8(SIMD8(repeating: -200))[0], 0, accuracy: 1e-37)
        XCTAssertEqual(exp8(SIMD8(repeating: 0))[0], 1)
    }

    func testLog8AndPowAbs8Accuracy() {
        for x0 in stride(from: -30.0, through: 30.0, by: 0.173) {
            let x = SIMD8<Float>((0..<8).map { Float(exp(x0 + Double($0) * 0.0137)) })
            let l = log8(x), p = powAbs8(-x, 2.4)
            for i in 0..<8 {
                XCTAssertEqual(Double(l[i]), log(Double(x[i])), accuracy: 2e-7 * max(1, abs(log(Double(x[i])))), "log(\(x[i]))")
                let ref = pow(Double(x[i]), 2.4)
                // e^y amplifies y's rounding: the relative error grows with |y| = |2.4·ln x|.
                XCTAssertEqual(Double(p[i]), ref, accuracy: 4e-7 * max(1, abs(2.4 * log(Double(x[i])))) * ref, "|−\(x[i])|^2.4")
            }
        }
        XCTAssertEqual(powAbs8(SIMD8(repeating: 0), 2.4)[0], 0, accuracy: 1e-37)
        XCTAssertEqual(log8(SIMD8(repeating: 1))[0], 0)
    }

    func testSoftmaxAndRMSNorm() {
        var x: [Float] = (0..<37).map { Float($0 % 7) - 2.5 }
        let ref = x.map { Double($0) }
        let m = ref.max()!, s = ref.reduce(0) { $0 + exp($1 - m) }
        x.withUnsafeMutableBufferPointer { softmaxInPlace($0.baseAddress!, 37) }
        for i in 0..<37 { XCTAssertEqual(Double(x[i]), exp(ref[i] - m) / s, accuracy: 1e-7) }
        let v: [Float] = [3, 4], w: [Float] = [1, 2]
        var y: [Float] = [0, 0]
        rmsNorm(v, w, &y, 2, eps: 0)    // rms = √12.5
        XCTAssertEqual(Double(y[0]), 3 / 12.5.squareRoot(), accuracy: 1e-6)
        XCTAssertEqual(Double(y[1]), 8 / 12.5.squareRoot(), accuracy: 1e-6)
        var g: [Float] = (0..<19).map { Float($0) - 9 }
        let u: [Float] = (0..<19).map { Float($0) * 0.5 }
        let want = zip(g, u).map { $0 / (1 + exp(-$0)) * $1 }
        siluMultiply(&g, u, 19)
        for i in 0..<19 { XCTAssertEqual(g[i], want[i], accuracy: 1e-5 * max(1, abs(want[i]))) }
    }

    func testSeededGeneratorIsReproducible() {
        var a = SeededGenerator(seed: 42), b = SeededGenerator(seed: 42), c = SeededGenerator(seed: 43)
        let xa = (0..<5).map { _ in a.next() }
        XCTAssertEqual(xa, (0..<5).map { _ in b.next() })
        XCTAssertNotEqual(xa, (0..<5).map { _ in c.next() })
    }
}

final class ParallelGEMMTests: XCTestCase {
    /// Both ways of splitting (by rows for prefill, by columns for one-token decode) give what one BLAS call gives.
    func testSplitsMatchSingleCall() {
        var g = SeededGenerator(seed: 3)
        for (m, n, k) in [(1, 4096, 96), (3, 2000, 130), (300, 700, 64), (64, 64, 64)] {
            for transB in [false, true] {
                let a = (0..<(m * k)).map { _ in Float(g.nextDouble() - 0.5) }
                let b = (0..<(n * k)).map { _ in Float(g.nextDouble() - 0.5) }
                var c1 = [Float](repeating: 0, count: m * n), c2 = c1
                Float.gemm(false, transB, m, n, k, 0.5, a, k, b, transB ? k : n, 0, &c1, n)
                withSingleThreadedBLAS {
                    parallelSgemm(transB: transB, m, n, k, 0.5, a, k, b, transB ? k : n, &c2, n)
                }
                // Equal up to summation order (the split changes OpenBLAS's blocking).
                for i in c1.indices { XCTAssertEqual(c1[i], c2[i], accuracy: 1e-5, "m \(m) n \(n) k \(k) transB \(transB) at \(i)") }
            }
        }
    }
}
