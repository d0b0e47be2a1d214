import Foundation

// Hadamard rotations (DESIGN.md §3; COQUANT_RESQ.md §2.2): the normalised Walsh–Hadamard transform for powers of two,
// Kronecker products `had_K ⊗ H_{n/K}` for the other sizes QuaRot supports, and a seeded random orthogonal block
// where no Hadamard factor is known. Conventions are QuaRot's `matmul_hadU` (`spcl/QuaRot@5008669`,
// `fake_quant/hadamard_utils.py`), pinned by `Tests/Fixtures/quant-oracles/hadamard.safetensors`:
//
// * the transform acts on the last axis, one row = one vector: `y = M x`, so a row-major [rows, n] buffer X becomes
//   `X Mᵀ`;
// * `M = (B ⊗ H_p) / √n` with n = K·p, p a power of two, `H_p` the Sylvester matrix in natural order
//   (`H_1 = [1]`, `H_2m = [[H_m, H_m], [H_m, −H_m]]`) and B the K×K block (`B Bᵀ = K·I`); index i of a row splits as
//   `i = k·p + r` (k slow): FWHT-p over r, then B over k;
// * the transposed transform uses Bᵀ (`H_p` is symmetric), so `transposed ∘ forward = identity`.
//
// The K×K Hadamard matrices are constructed, not tabulated: Paley I / Paley II over GF(q) and Sylvester doubling.
// With the preference order of `HadamardMatrix.construct` they equal QuaRot's hard-coded had12, had20, had28, had36,
// had40, had60, had108 and had140 entry for entry (had12 is checked against the oracle in the tests), so for those
// sizes the transform is QuaRot's. QuaRot's had52, had156 and had172 are Williamson-type matrices from a table:
// ours for 52 is Paley II over GF(25) (another valid Hadamard matrix, so the transform differs from QuaRot's), and 156
// and 172 have no construction here: n = 156·2^j, 172·2^j (j ≥ 1) use Hadamard-312 (Paley I, GF(311)) and
// Hadamard-344 (Paley I, GF(7³)) instead, and n = 156 or 172 exactly falls back to a random orthogonal block.
//
// Choice of K for a size n (`HadamardTransform.init`): QuaRot's `get_hadK` order first (172, 156, 140, 108, 60, 52,
// 36, 28, 44, 40, 20, 12, with n/K a power of two; 44 is in CoQuant's list), then a power of two (K = 1), then
// (`extendedOrders`, on by default) the smallest constructible order K = m·2^j dividing n (m = odd part of n), e.g.
// 4864 = 19·256 → Paley II over GF(37), K = 76, then the random orthogonal block of order m.

// MARK: - Fast Walsh–Hadamard transform

@inline(__always) private func load8(_ p: UnsafeMutablePointer<Float>) -> SIMD8<Float> {
    UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
}

@inline(__always) private func store8(_ p: UnsafeMutablePointer<Float>, _ v: SIMD8<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<Float>.self)
}

@inline(__always) private func load4(_ p: UnsafeMutablePointer<Double>) -> SIMD4<Double> {
    UnsafeRawPointer(p).loadUnaligned(as: SIMD4<Double>.self)
}

@inline(__always) private func store4(_ p: UnsafeMutablePointer<Double>, _ v: SIMD4<Double>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD4<Double>.self)
}

@inline(__always) func isPowerOfTwo(_ n: Int) -> Bool { n > 0 && n & (n - 1) == 0 }

/// Unnormalised in-place Walsh–Hadamard transform of `x[0..<n]` (n a power of two), natural (Sylvester) order:
/// `x ← H_n x`, the butterflies (x[j], x[j+h]) → (x[j] + x[j+h], x[j] − x[j+h]) for h = 1, 2, 4, … .
/// Stages h = 1, 2, 4 run inside one SIMD8 register (a lane swap plus a signed add per stage), larger stages two at
/// a time (radix 4) on SIMD8 vectors.
public func fwhtUnnormalized(_ x: UnsafeMutablePointer<Float>, _ n: Int) {
    precondition(isPowerOfTwo(n), "FWHT size \(n) is not a power of two")
    if n < 8 {
        var h = 1
        while h < n {
            for i in stride(from: 0, to: n, by: 2 * h) {
                for j in i..<(i + h) { let a = x[j], b = x[j + h]; x[j] = a + b; x[j + h] = a - b }
            }
            h *= 2
        }
        return
    }
    // y = s ⊙ v + v[i ^ h]: lanes with bit h clear get v[i] + v[i+h], lanes with it set get v[i−h] − v[i].
    let s1 = SIMD8<Float>(1, -1, 1, -1, 1, -1, 1, -1)
    let s2 = SIMD8<Float>(1, 1, -1, -1, 1, 1, -1, -1)
    let s4 = SIMD8<Float>(1, 1, 1, 1, -1, -1, -1, -1)
    var i = 0
    while i < n {
        var v = load8(x + i)
        v = SIMD8(v[1], v[0], v[3], v[2], v[5], v[4], v[7], v[6]) + s1 * v
        v = SIMD8(v[2], v[3], v[0], v[1], v[6], v[7], v[4], v[5]) + s2 * v
        v = SIMD8(v[4], v[5], v[6], v[7], v[0], v[1], v[2], v[3]) + s4 * v
        store8(x + i, v)
        i += 8
    }
    var h = 8
    while 4 * h <= n {       // stages h and 2h fused: (a, b, c, d) at j, j+h, j+2h, j+3h
        var base = 0
        while base < n {
            var j = base
            while j < base + h {
                let a = load8(x + j), b = load8(x + j + h), c = load8(x + j + 2 * h), d = load8(x + j + 3 * h)
                let ab = a + b, amb = a - b, cd = c + d, cmd = c - d
                store8(x + j, ab + cd)
                store8(x + j + h, amb + cmd)
                store8(x + j + 2 * h, ab - cd)
                store8(x + j + 3 * h, amb - cmd)
                j += 8
            }
            base += 4 * h
        }
        h *= 4
    }
    if h < n {               // one radix-2 stage left (h = n/2)
        var j = 0
        while j < h {
            let a = load8(x + j), b = load8(x + j + h)
            store8(x + j, a + b)
            store8(x + j + h, a - b)
            j += 8
        }
    }
}

/// Float64 version of `fwhtUnnormalized` (SIMD4 for h ≥ 4).
public func fwhtUnnormalized(_ x: UnsafeMutablePointer<Double>, _ n: Int) {
    precondition(isPowerOfTwo(n), "FWHT size \(n) is not a power of two")
    var h = 1
    while h < min(n, 4) {
        for i in stride(from: 0, to: n, by: 2 * h) {
            for j in i..<(i + h) { let a = x[j], b = x[j + h]; x[j] = a + b; x[j + h] = a - b }
        }
        h *= 2
    }
    while h < n {
        var base = 0
        while base < n {
            var j = base
            while j < base + h {
                let a = load4(x + j), b = load4(x + j + h)
                store4(x + j, a + b)
                store4(x + j + h, a - b)
                j += 4
            }
            base += 2 * h
        }
        h *= 2
    }
}

/// Normalised FWHT `y = H_n x / √n` of every row of a row-major [rows, n] buffer, in place (n a power of two).
/// Symmetric and orthogonal, so applying it twice is the identity. Rows are split across both cores when large.
public func fwhtRows(_ x: UnsafeMutablePointer<Float>, rows: Int, n: Int) {
    precondition(isPowerOfTwo(n), "FWHT size \(n) is not a power of two")
    HadamardTransform(size: n).apply(x, rows: rows)
}

/// Float64 version of `fwhtRows`.
public func fwhtRows(_ x: UnsafeMutablePointer<Double>, rows: Int, n: Int) {
    precondition(isPowerOfTwo(n), "FWHT size \(n) is not a power of two")
    HadamardTransform(size: n).apply(x, rows: rows)
}

// MARK: - Finite fields and Hadamard matrices

/// GF(q), q = p^e. An element is an integer in 0..<q whose base-p digits are the coefficients of a polynomial over
/// GF(p) (digit 0 = constant term), taken modulo the lexicographically smallest monic irreducible polynomial of
/// degree e. For e = 1 this is arithmetic mod p on 0..<p in natural order.
struct FiniteField {
    let p: Int, e: Int, q: Int
    let modulus: [Int]          // monic, degree e, coefficients low → high (e + 1 of them)

    init?(order q: Int) {
        guard let (p, e) = primePower(q) else { return nil }
        self.p = p; self.e = e; self.q = q
        if e == 1 { modulus = [0, 1]; return }
        var found: [Int]?
        for c in 0..<q {                         // candidate x^e + (digits of c)
            let f = digits(c, base: p, count: e) + [1]
            if isIrreducible(f, p: p) { found = f; break }
        }
        guard let f = found else { return nil }  // unreachable: irreducible polynomials exist for every degree
        modulus = f
    }

    func subtract(_ a: Int, _ b: Int) -> Int {
        if e == 1 { return ((a - b) % p + p) % p }
        let da = digits(a, base: p, count: e), db = digits(b, base: p, count: e)
        return number((0..<e).map { ((da[$0] - db[$0]) % p + p) % p }, base: p)
    }

    func multiply(_ a: Int, _ b: Int) -> Int {
        if e == 1 { return a * b % p }
        let da = digits(a, base: p, count: e), db = digits(b, base: p, count: e)
        var prod = [Int](repeating: 0, count: 2 * e - 1)
        for i in 0..<e { for j in 0..<e { prod[i + j] = (prod[i + j] + da[i] * db[j]) % p } }
        return number(polynomialRemainder(prod, modulus, p: p).prefix(e).map { $0 }, base: p)
    }

    /// χ(a): 0 for a = 0, +1 for a non-zero square, −1 otherwise (the quadratic character, Legendre symbol for e = 1).
    func quadraticCharacter() -> [Int8] {
        var chi = [Int8](repeating: -1, count: q)
        chi[0] = 0
        for x in 1..<q { chi[multiply(x, x)] = 1 }
        return chi
    }
}

/// (p, e) with q = p^e for a prime p, or nil.
func primePower(_ q: Int) -> (Int, Int)? {
    guard q >= 2 else { return nil }
    var p = 2
    while p * p <= q && q % p != 0 { p += 1 }
    if q % p != 0 { p = q }                      // q is prime
    var r = q, e = 0
    while r % p == 0 { r /= p; e += 1 }
    return r == 1 ? (p, e) : nil
}

func isPrime(_ q: Int) -> Bool { primePower(q).map { $0.1 == 1 } ?? false }

private func digits(_ a: Int, base p: Int, count: Int) -> [Int] {
    var a = a
    return (0..<count).map { _ in defer { a /= p }; return a % p }
}

private func number(_ digits: [Int], base p: Int) -> Int { digits.reversed().reduce(0) { $0 * p + $1 } }

/// a mod m over GF(p), m monic; the result padded to max(count(a), count(m) − 1) coefficients.
private func polynomialRemainder(_ a: [Int], _ m: [Int], p: Int) -> [Int] {
    var r = a
    let dm = m.count - 1
    var i = r.count - 1
    while i >= dm {
        let c = r[i]
        if c != 0 { for j in 0...dm { r[i - dm + j] = ((r[i - dm + j] - c * m[j]) % p + p) % p } }
        i -= 1
    }
    return r.count >= dm ? r : r + [Int](repeating: 0, count: dm - r.count)
}

/// Monic f of degree e is irreducible over GF(p) iff no monic polynomial of degree 1…e/2 divides it.
private func isIrreducible(_ f: [Int], p: Int) -> Bool {
    let e = f.count - 1
    if e < 2 { return true }
    for d in 1...(e / 2) {
        var c = 0
        while c < Int(pow(Double(p), Double(d)).rounded()) {
            let g = digits(c, base: p, count: d) + [1]
            if polynomialRemainder(f, g, p: p).prefix(d).allSatisfy({ $0 == 0 }) { return false }
            c += 1
        }
    }
    return true
}

/// A K×K matrix of ±1 with `H Hᵀ = K·I`, and how it was built.
public struct HadamardMatrix: Sendable {
    public indirect enum Construction: Sendable, Equatable, CustomStringConvertible {
        /// `H_1 = [1]`, `H_2m = [[H_m, H_m], [H_m, −H_m]]` (natural order, symmetric).
        case sylvester
        /// q ≡ 3 (mod 4), order q + 1: `[[1, −1ᵀ], [1, I + Q]]`, `Q[i][j] = χ(x_i − x_j)` (skew), x_i the elements of
        /// GF(q) in `FiniteField`'s order. H − I is skew-symmetric.
        case paleyI(q: Int)
        /// q ≡ 1 (mod 4), order 2(q + 1): `[[1, 1], [1, −1]] ⊗ C + [[1, −1], [−1, −1]] ⊗ I` with the symmetric
        /// conference matrix `C = [[0, 1ᵀ], [1, Q]]`. Symmetric.
        case paleyII(q: Int)
        /// `[[1, 1], [1, −1]] ⊗ H` = `[[H, H], [H, −H]]`.
        case doubled(Construction)

        public var description: String {
            switch self {
            case .sylvester: return "Sylvester"
            case .paleyI(let q): return "Paley I over GF(\(q))"
            case .paleyII(let q): return "Paley II over GF(\(q))"
            case .doubled(let c): return "Sylvester doubling of \(c)"
            }
        }
    }

    public let order: Int
    public let construction: Construction
    /// Row-major, entries ±1.
    public let entries: [Int8]

    public subscript(i: Int, j: Int) -> Int8 { entries[i * order + j] }

    /// The matrix as Float64 (entries ±1, unnormalised).
    public var matrix: Matrix<Double> { Matrix(rows: order, cols: order, data: entries.map { Double($0) }) }

    /// A Hadamard matrix of order m, or nil where none of the constructions applies. Tried in this order (the order
    /// that reproduces QuaRot's matrices, see the file header): Sylvester for powers of two; Paley I over a prime
    /// field; Paley II over a prime field; doubling of a constructible m/2; Paley I, then Paley II, over a prime-power
    /// field. Orders ≤ 300 (multiples of 4) with none of these: 92, 116, 156, 172, 184, 188, 232, 236, 260, 268,
    /// 292 (Hadamard matrices of these orders exist, but need Williamson-type or other searched constructions).
    public static func construct(order m: Int) -> HadamardMatrix? {
        if isPowerOfTwo(m) { return sylvester(m) }
        guard m % 4 == 0 else { return nil }
        if isPrime(m - 1), (m - 1) % 4 == 3 { return paleyI(q: m - 1) }
        if isPrime(m / 2 - 1), (m / 2 - 1) % 4 == 1 { return paleyII(q: m / 2 - 1) }
        if let half = construct(order: m / 2) { return doubled(half) }
        if (m - 1) % 4 == 3, let h = paleyI(q: m - 1) { return h }
        if (m / 2 - 1) % 4 == 1, let h = paleyII(q: m / 2 - 1) { return h }
        return nil
    }

    static func sylvester(_ m: Int) -> HadamardMatrix {
        var e = [Int8](repeating: 0, count: m * m)
        for i in 0..<m { for j in 0..<m { e[i * m + j] = (i & j).nonzeroBitCount % 2 == 0 ? 1 : -1 } }
        return HadamardMatrix(order: m, construction: .sylvester, entries: e)
    }

    static func paleyI(q: Int) -> HadamardMatrix? {
        guard q % 4 == 3, let field = FiniteField(order: q) else { return nil }
        let chi = field.quadraticCharacter(), m = q + 1
        var e = [Int8](repeating: 1, count: m * m)
        for j in 1..<m { e[j] = -1 }
        for i in 0..<q { for j in 0..<q where i != j { e[(1 + i) * m + 1 + j] = chi[field.subtract(i, j)] } }
        return HadamardMatrix(order: m, construction: .paleyI(q: q), entries: e)
    }

    static func paleyII(q: Int) -> HadamardMatrix? {
        guard q % 4 == 1, let field = FiniteField(order: q) else { return nil }
        let chi = field.quadraticCharacter(), c = q + 1, m = 2 * c
        var conference = [Int8](repeating: 1, count: c * c)
        conference[0] = 0
        for i in 0..<q { for j in 0..<q { conference[(1 + i) * c + 1 + j] = chi[field.subtract(i, j)] } }
        let a: [[Int8]] = [[1, 1], [1, -1]], b: [[Int8]] = [[1, -1], [-1, -1]]
        var e = [Int8](repeating: 0, count: m * m)
        for u in 0..<2 { for v in 0..<2 { for i in 0..<c { for j in 0..<c {
            e[(u * c + i) * m + v * c + j] = a[u][v] * conference[i * c + j] + (i == j ? b[u][v] : 0)
        } } } }
        return HadamardMatrix(order: m, construction: .paleyII(q: q), entries: e)
    }

    static func doubled(_ h: HadamardMatrix) -> HadamardMatrix {
        let c = h.order, m = 2 * c
        var e = [Int8](repeating: 0, count: m * m)
        for u in 0..<2 { for v in 0..<2 { for i in 0..<c { for j in 0..<c {
            e[(u * c + i) * m + v * c + j] = (u == 1 && v == 1) ? -h.entries[i * c + j] : h.entries[i * c + j]
        } } } }
        return HadamardMatrix(order: m, construction: .doubled(h.construction), entries: e)
    }
}

// MARK: - The transform

/// The orthogonal transform QuaRot applies for a dimension n (`matmul_hadU`), with the construction it used.
public struct HadamardTransform: Sendable {
    public enum Construction: Sendable, Equatable, CustomStringConvertible {
        /// n is a power of two: `H_n / √n`.
        case sylvester
        /// `(had_K ⊗ H_{n/K}) / √n` with a K×K Hadamard matrix built as stated.
        case hadamard(order: Int, HadamardMatrix.Construction)
        /// The documented fallback where no Hadamard factor is known: `Q ⊗ (H_{n/K}/√(n/K))` with Q a K×K random
        /// orthogonal matrix (`randomOrthogonalMatrix(K, seed:)`) and n/K the largest power of two dividing n.
        case randomOrthogonalBlock(order: Int, seed: UInt64)

        public var description: String {
            switch self {
            case .sylvester: return "Walsh–Hadamard (Sylvester)"
            case .hadamard(let k, let c): return "Hadamard-\(k) (\(c)) ⊗ Walsh–Hadamard"
            case .randomOrthogonalBlock(let k, let seed):
                return "random orthogonal \(k)×\(k) (seed \(seed)) ⊗ Walsh–Hadamard — no Hadamard factor known"
            }
        }

        /// True when the transform is an exact (scaled ±1) Hadamard matrix.
        public var isHadamard: Bool { if case .randomOrthogonalBlock = self { return false } else { return true } }
    }

    /// QuaRot's `get_hadK` order of block sizes K (with CoQuant's 44), each used when n/K is a power of two.
    public static let quarotBlockOrders = [172, 156, 140, 108, 60, 52, 36, 28, 44, 40, 20, 12]

    public let size: Int
    /// K: the block mixed by a dense K×K matrix (1 for a pure FWHT).
    public let blockOrder: Int
    /// n / K, a power of two: the FWHT length.
    public let fwhtSize: Int
    public let construction: Construction
    /// The K×K block B, scaled so that `B Bᵀ = K·I` (±1 for Hadamard blocks, √K·Q for the fallback), row-major.
    public let block: [Double]
    /// B/√n and Bᵀ/√n (the whole normalisation folded into the block), in both precisions.
    private let mix32: [Float], mix32T: [Float], mix64: [Double], mix64T: [Double]

    /// - Parameters:
    ///   - size: n, the length of each transformed vector.
    ///   - fallbackSeed: seed of the random orthogonal block, used only when no Hadamard factor is found.
    ///   - extendedOrders: when neither a QuaRot block size nor a pure FWHT fits, try every Hadamard order
    ///     K = m·2^j dividing n (m the odd part of n, smallest K first) that `HadamardMatrix.construct` can build
    ///     before falling back to the random block. For example 4864 = 19·256 gets Paley II over GF(37) (K = 76) ⊗
    ///     FWHT-64 and 11008 = 172·64 gets Paley I over GF(343) (K = 344) ⊗ FWHT-32. With `false`, only QuaRot's
    ///     sizes are Hadamard (QuaRot itself asserts on the others; the reference CoQuant code uses hard-coded random
    ///     orthogonal 37×37 / 38×38 blocks there).
    public init(size n: Int, fallbackSeed: UInt64 = 0, extendedOrders: Bool = true) {
        precondition(n >= 1, "Hadamard size must be positive")
        size = n
        var chosen: HadamardMatrix?
        for k in Self.quarotBlockOrders where n % k == 0 && isPowerOfTwo(n / k) {
            if let h = HadamardMatrix.construct(order: k) { chosen = h; break }
        }
        if chosen == nil, !isPowerOfTwo(n), extendedOrders {
            var k = n >> n.trailingZeroBitCount
            while n % k == 0 && chosen == nil {
                chosen = HadamardMatrix.construct(order: k)
                k *= 2
            }
        }
        if let h = chosen {
            blockOrder = h.order
            construction = .hadamard(order: h.order, h.construction)
            block = h.entries.map { Double($0) }
        } else if isPowerOfTwo(n) {
            blockOrder = 1
            construction = .sylvester
            block = [1]
        } else {
            let k = n >> n.trailingZeroBitCount
            blockOrder = k
            construction = .randomOrthogonalBlock(order: k, seed: fallbackSeed)
            let scale = Double(k).squareRoot()
            block = randomOrthogonalMatrix(k, seed: fallbackSeed).data.map { $0 * scale }
        }
        fwhtSize = n / blockOrder
        let k = blockOrder, invSqrtN = 1 / Double(n).squareRoot(), b = block
        let forward = b.map { $0 * invSqrtN }
        let backward = (0..<(k * k)).map { b[($0 % k) * k + $0 / k] * invSqrtN }
        mix64 = forward
        mix64T = backward
        mix32 = forward.map { Float($0) }
        mix32T = backward.map { Float($0) }
    }

    /// In place, every row of a row-major [rows, n] buffer: `x ← M x` (`transposed`: `x ← Mᵀ x`), i.e. X ← X Mᵀ
    /// (X M). Float32 arithmetic; rows split across both cores when there is enough work.
    public func apply(_ x: UnsafeMutablePointer<Float>, rows: Int, transposed: Bool = false) {
        (transposed ? mix32T : mix32).withUnsafeBufferPointer { c in
            transform(x, rows: rows, mix: c.baseAddress!, fwht: fwhtUnnormalized, mixSIMD: mixBlocks)
        }
    }

    /// Float64 version of `apply`.
    public func apply(_ x: UnsafeMutablePointer<Double>, rows: Int, transposed: Bool = false) {
        (transposed ? mix64T : mix64).withUnsafeBufferPointer { c in
            transform(x, rows: rows, mix: c.baseAddress!, fwht: fwhtUnnormalized, mixSIMD: mixBlocks)
        }
    }

    /// From this block order up, the K×K mixing is a BLAS GEMM over a batch of rows instead of the SIMD loop.
    static let blasBlockOrder = 24
    /// Rows per GEMM batch on the BLAS path.
    static let blasBatchRows = 32

    /// FWHT-p of each of the K slices of every row, then the block mix `c` (B/√n or Bᵀ/√n; K = 1: c = [1/√n]).
    /// Small K: a SIMD loop per row. Large K: rows in batches of R are gathered into a K × (R·p) matrix G
    /// (G[k, r·p + s] = x_r[k·p + s]), one GEMM `c · G`, scattered back — single-threaded BLAS inside our workers.
    private func transform<T: BLASScalar>(_ x: UnsafeMutablePointer<T>, rows: Int, mix c: UnsafePointer<T>,
                                          fwht: (UnsafeMutablePointer<T>, Int) -> Void,
                                          mixSIMD: (UnsafeMutablePointer<T>, UnsafeMutablePointer<T>, UnsafePointer<T>, Int, Int) -> Void) {
        let n = size, k = blockOrder, p = fwhtSize
        let workers = rows >= 2 && rows * n * MemoryLayout<T>.size >= 1 << 18 ? min(forwardWorkers, rows) : 1
        let blas = k >= Self.blasBlockOrder
        let batch = blas ? Self.blasBatchRows : 1
        func work() {
            parallelFor(workers) { w in
                let r0 = rows * w / workers, r1 = rows * (w + 1) / workers
                let scratch = UnsafeMutablePointer<T>.allocate(capacity: k > 1 ? 2 * batch * n : 1)
                defer { scratch.deallocate() }
                var r = r0
                while r < r1 {
                    let count = min(batch, r1 - r)
                    let block = x + r * n
                    if p > 1 { for i in 0..<(count * k) { fwht(block + i * p, p) } }
                    if k == 1 {
                        let scale = c[0]
                        for i in 0..<(count * n) { block[i] *= scale }
                    } else if !blas {
                        mixSIMD(block, scratch, c, k, p)
                        block.update(from: scratch, count: n)
                    } else {
                        let width = count * p, g = scratch, y = scratch + batch * n
                        for j in 0..<count { for kk in 0..<k {
                            (g + kk * width + j * p).update(from: block + j * n + kk * p, count: p)
                        } }
                        T.gemm(false, false, k, width, k, 1, c, k, g, width, 0, y, width)
                        for j in 0..<count { for kk in 0..<k {
                            (block + j * n + kk * p).update(from: y + kk * width + j * p, count: p)
                        } }
                    }
                    r += count
                }
            }
        }
        if blas { withSingleThreadedBLAS(work) } else { work() }
    }

    /// Every row of `m` (which must have `size` columns), as `apply`.
    public func apply(to m: inout Matrix<Float>, transposed: Bool = false) {
        precondition(m.cols == size, "Hadamard transform of size \(size) applied to rows of length \(m.cols)")
        let rows = m.rows
        m.data.withUnsafeMutableBufferPointer { apply($0.baseAddress!, rows: rows, transposed: transposed) }
    }

    /// Every row of `m` (which must have `size` columns), as `apply`.
    public func apply(to m: inout Matrix<Double>, transposed: Bool = false) {
        precondition(m.cols == size, "Hadamard transform of size \(size) applied to rows of length \(m.cols)")
        let rows = m.rows
        m.data.withUnsafeMutableBufferPointer { apply($0.baseAddress!, rows: rows, transposed: transposed) }
    }

    /// The dense n×n matrix M (`transposed`: Mᵀ), `M[i, j] = B[k_i, k_j] · (−1)^popcount(r_i & r_j) / √n` with
    /// i = k_i·p + r_i. Orthogonal.
    public func matrix(transposed: Bool = false) -> Matrix<Double> {
        let n = size, k = blockOrder, p = fwhtSize
        let invSqrtN = 1 / Double(n).squareRoot()
        var m = Matrix<Double>(zeros: n, n)
        for i in 0..<n {
            let (ki, ri) = (i / p, i % p)
            for j in 0..<n {
                let (kj, rj) = (j / p, j % p)
                let b = transposed ? block[kj * k + ki] : block[ki * k + kj]
                m.data[i * n + j] = (ri & rj).nonzeroBitCount % 2 == 0 ? b * invSqrtN : -b * invSqrtN
            }
        }
        return m
    }
}

/// y[k'·p + r] = Σ_k c[k'·K + k] · x[k·p + r]: the K×K block applied along the slow index of a row viewed as K×p.
@inline(__always)
private func mixBlocks(_ x: UnsafeMutablePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ c: UnsafePointer<Float>,
                       _ k: Int, _ p: Int) {
    for kOut in 0..<k {
        let out = y + kOut * p
        let cr = c + kOut * k
        var r = 0
        while r + 8 <= p {
            var acc = SIMD8<Float>()
            for kIn in 0..<k { acc.addProduct(load8(x + kIn * p + r), SIMD8(repeating: cr[kIn])) }
            store8(out + r, acc)
            r += 8
        }
        while r < p {
            var acc: Float = 0
            for kIn in 0..<k { acc += cr[kIn] * x[kIn * p + r] }
            out[r] = acc
            r += 1
        }
    }
}

@inline(__always)
private func mixBlocks(_ x: UnsafeMutablePointer<Double>, _ y: UnsafeMutablePointer<Double>, _ c: UnsafePointer<Double>,
                       _ k: Int, _ p: Int) {
    for kOut in 0..<k {
        let out = y + kOut * p
        let cr = c + kOut * k
        var r = 0
        while r + 4 <= p {
            var acc = SIMD4<Double>()
            for kIn in 0..<k { acc.addProduct(load4(x + kIn * p + r), SIMD4(repeating: cr[kIn])) }
            store4(out + r, acc)
            r += 4
        }
        while r < p {
            var acc: Double = 0
            for kIn in 0..<k { acc += cr[kIn] * x[kIn * p + r] }
            out[r] = acc
            r += 1
        }
    }
}

/// QuaRot's `random_hadamard_matrix(n)`: `D Mᵀ` with D a diagonal of random ±1 (one fair bit each from `generator`)
/// and M the `HadamardTransform` of size n (what `matmul_hadU(diag(s))` returns). Orthogonal.
public func randomHadamardMatrix(_ n: Int, generator: inout SeededGenerator) -> Matrix<Double> {
    let signs: [Double] = (0..<n).map { _ in generator.next() >> 63 == 0 ? -1 : 1 }
    var r = HadamardTransform(size: n).matrix(transposed: true)
    for i in 0..<n { for j in 0..<n { r.data[i * n + j] *= signs[i] } }
    return r
}

/// `randomHadamardMatrix(n, generator:)` with a fresh `SeededGenerator(seed:)`.
public func randomHadamardMatrix(_ n: Int, seed: UInt64) -> Matrix<Double> {
    var g = SeededGenerator(seed: seed)
    return randomHadamardMatrix(n, generator: &g)
}
