import CoQuantModel
import CoQuantTensor
import Foundation

// KL divergence of a (quantized) model from its full-precision reference on WikiText-2 windows, reported as
// llama.cpp's `llama-perplexity --kl-divergence` does: mean and percentiles of the per-token KL(P_fp ‖ Q),
// the rate at which both models pick the same top token, and Δ perplexity (CONVENTIONS.md §3.2).
//
// Differences from llama.cpp, on purpose: windows are the GPTQ/QuaRot ones of `ppl` (every prediction of every
// window is scored, not the second half of 512-token chunks), and the reference keeps only each token's top-k
// log-probabilities plus the log of the remaining mass instead of the whole vocabulary (a few MB instead of GBs).
// The KL is then that of the two distributions coarsened to k + 1 outcomes (the top-k tokens and "the rest"),
// which by the data-processing inequality is a lower bound of the full KL. How much it keeps depends on how much of
// the disagreement sits in the tail: SmolLM2 with RTN-W4 weights keeps 79 / 88 / 95 % at k = 32 / 128 / 512
// (KLDivergenceTests), so the default is k = 128 (≈ 1 KB per token, 34 MB for 16 windows of 2048).

/// The full-precision model's side of the comparison, computed once and cached in a file.
public struct KLReference: Equatable {
    public let seqlen: Int
    public let windows: Int
    public let topK: Int
    public let vocabSize: Int
    /// FNV-1a of the scored token ids, so a cache made from other text or another tokenizer is refused.
    public let tokensHash: UInt64
    /// Per scored token (windows × (seqlen − 1) of them, window-major): the reference's top-k ids by descending
    /// log-probability [tokens × k], their log-probabilities, log(1 − Σ top-k p), and −log p(actual next token).
    public var topIds: [Int32]
    public var topLogProbs: [Float]
    public var restLogMass: [Float]
    public var nll: [Float]

    public var tokens: Int { nll.count }

    /// Runs `model` over the first `windows` windows of `ids` and keeps what the comparison needs.
    public static func compute(model: LlamaModel, ids: [Int], seqlen: Int, windows: Int, topK: Int = 128,
                               progress: ((Int, Int, Double) -> Void)? = nil) throws -> KLReference {
        let windows = try checkWindows(ids: ids, seqlen: seqlen, windows: windows)
        let V = model.config.vocabSize, k = min(topK, V)
        guard k >= 1 else { throw EvalError("--kl-top-k must be at least 1") }
        var ref = KLReference(seqlen: seqlen, windows: windows, topK: k, vocabSize: V,
                              tokensHash: fnv1a(ids[0..<(windows * seqlen)]), topIds: [], topLogProbs: [], restLogMass: [], nll: [])
        let clock = ContinuousClock.now
        for w in 0..<windows {
            let window = Array(ids[(w * seqlen)..<((w + 1) * seqlen)])
            let logits = model.forward(window)
            logits.withUnsafeBufferPointer { p in
                for t in 0..<(seqlen - 1) {
                    let row = p.baseAddress! + t * V
                    let lse = logSumExp(row, V)
                    let top = topIndices(row, V, k)
                    var mass = 0.0
                    for i in top {
                        let lp = Double(row[i]) - lse
                        mass += exp(lp)
                        ref.topIds.append(Int32(i))
                        ref.topLogProbs.append(Float(lp))
                    }
                    // With k = V nothing is left: 1 − mass is rounding noise (±1e-7), whose log would add a spurious term.
                    ref.restLogMass.append(k == V ? -.infinity : Float(log(max(0, 1 - mass))))
                    ref.nll.append(Float(lse - Double(row[window[t + 1]])))
                }
            }
            progress?(w + 1, windows, seconds(since: clock))
        }
        return ref
    }
}

func checkWindows(ids: [Int], seqlen: Int, windows: Int) throws -> Int {
    guard seqlen >= 2 else { throw EvalError("--seqlen must be at least 2 (got \(seqlen))") }
    guard windows >= 1 else { throw EvalError("--windows must be at least 1") }
    let available = ids.count / seqlen
    guard available >= 1 else { throw EvalError("the text has \(ids.count) tokens, fewer than one window of \(seqlen)") }
    return min(windows, available)
}

/// Indices of the k largest entries, largest first (ties: lower index first).
func topIndices(_ x: UnsafePointer<Float>, _ n: Int, _ k: Int) -> [Int] {
    var top: [Int] = []
    top.reserveCapacity(k + 1)
    for i in 0..<n {
        if top.count == k, x[i] <= x[top[k - 1]] { continue }
        var j = top.count
        while j > 0 && x[top[j - 1]] < x[i] { j -= 1 }
        top.insert(i, at: j)
        if top.count > k { top.removeLast() }
    }
    return top
}

func fnv1a<C: Collection>(_ ids: C) -> UInt64 where C.Element == Int {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for id in ids {
        var v = UInt32(truncatingIfNeeded: id)
        for _ in 0..<4 {
            h = (h ^ UInt64(v & 0xff)) &* 0x100_0000_01b3
            v >>= 8
        }
    }
    return h
}

// MARK: - Cache file

/// `KLREF01\n`, a UInt32 (little-endian) length and a JSON header, then topIds (Int32), topLogProbs, restLogMass and
/// nll (Float32), all little-endian. Written atomically, so an interrupted run leaves no half file behind.
extension KLReference {
    struct Header: Codable {
        let seqlen, windows, topK, vocabSize, tokens: Int
        let tokensHash: String
        let model: String

        enum CodingKeys: String, CodingKey {
            case seqlen, windows, topK = "top_k", vocabSize = "vocab_size", tokens, tokensHash = "tokens_fnv1a", model
        }
    }

    static let magic = Data("KLREF01\n".utf8)

    public func write(to path: String, model: String) throws {
        let header = try JSONEncoder().encode(Header(seqlen: seqlen, windows: windows, topK: topK, vocabSize: vocabSize,
                                                     tokens: tokens, tokensHash: String(tokensHash, radix: 16), model: model))
        var data = Self.magic
        withUnsafeBytes(of: UInt32(header.count).littleEndian) { data.append(contentsOf: $0) }
        data.append(header)
        topIds.withUnsafeBytes { data.append(contentsOf: $0) }
        for a in [topLogProbs, restLogMass, nll] { a.withUnsafeBytes { data.append(contentsOf: $0) } }
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try data.write(to: URL(fileURLWithPath: path), options: .atomic)
    }

    public init(contentsOf path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else { throw DataFileError(path, "cannot be read") }
        guard data.count > 12, data.prefix(8) == Self.magic else { throw DataFileError(path, "is not a CoQuant KL reference file") }
        let length = Int(data[8..<12].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }.littleEndian)
        guard data.count >= 12 + length, let h = try? JSONDecoder().decode(Header.self, from: data[12..<(12 + length)]),
              let hash = UInt64(h.tokensHash, radix: 16) else {
            throw DataFileError(path, "has a malformed header")
        }
        let n = h.tokens, k = h.topK
        guard data.count == 12 + length + 4 * (2 * n * k + 2 * n) else {
            throw DataFileError(path, "is truncated or has trailing bytes (expected \(12 + length + 4 * (2 * n * k + 2 * n)) bytes)")
        }
        var offset = 12 + length
        func take<T>(_ count: Int, _: T.Type) -> [T] {
            defer { offset += count * 4 }
            return data[offset..<(offset + count * 4)].withUnsafeBytes { raw in (0..<count).map { raw.loadUnaligned(fromByteOffset: $0 * 4, as: T.self) } }
        }
        self.init(seqlen: h.seqlen, windows: h.windows, topK: k, vocabSize: h.vocabSize, tokensHash: hash,
                  topIds: take(n * k, Int32.self), topLogProbs: take(n * k, Float.self), restLogMass: take(n, Float.self),
                  nll: take(n, Float.self))
    }
}

// MARK: - Comparison

public struct KLDivergenceResult: Codable, Sendable {
    public let windows: Int
    public let seqlen: Int
    public let tokens: Int
    public let topK: Int
    public let meanKL: Double
    public let meanKLStderr: Double
    /// "max", "99.9", "99", "95", "90", "median", "10", "5", "1", "min" (linear interpolation between ranks).
    public let klPercentiles: [String: Double]
    public let sameTop1: Double
    public let sameTop1Stderr: Double
    public let perplexityReference: Double
    public let perplexity: Double
    public let deltaPerplexity: Double
    /// Mean and RMS of p(next token) under the model minus under the reference (llama.cpp's Δp).
    public let meanDeltaP: Double
    public let rmsDeltaP: Double
    public let seconds: Double

    enum CodingKeys: String, CodingKey {
        case windows, seqlen, tokens, topK = "top_k", meanKL = "mean_kl", meanKLStderr = "mean_kl_stderr",
             klPercentiles = "kl_percentiles", sameTop1 = "same_top1", sameTop1Stderr = "same_top1_stderr",
             perplexityReference = "perplexity_reference", perplexity, deltaPerplexity = "delta_perplexity",
             meanDeltaP = "mean_delta_p", rmsDeltaP = "rms_delta_p", seconds
    }

    public var summary: String {
        String(format: "KL divergence: mean %.6f ± %.6f, median %.6f, 99%% %.6f; same top-1 %.2f%% ± %.2f%%; PPL %.4f vs %.4f (Δ %+.4f) (%d windows × %d tokens, top-%d)",
               meanKL, meanKLStderr, klPercentiles["median"] ?? .nan, klPercentiles["99"] ?? .nan, 100 * sameTop1, 100 * sameTop1Stderr,
               perplexity, perplexityReference, deltaPerplexity, windows, seqlen, topK)
    }
}

/// Compares `model` with the cached reference on the same windows of `ids` (which must be the reference's tokens).
public func klDivergence(model: LlamaModel, reference ref: KLReference, ids: [Int],
                         progress: ((Int, Int, Double) -> Void)? = nil) throws -> KLDivergenceResult {
    let seqlen = ref.seqlen, V = model.config.vocabSize, k = ref.topK
    guard V == ref.vocabSize else { throw EvalError("the model's vocabulary (\(V)) differs from the reference's (\(ref.vocabSize))") }
    guard ids.count >= ref.windows * seqlen, fnv1a(ids[0..<(ref.windows * seqlen)]) == ref.tokensHash else {
        throw EvalError("the KL reference was computed on other tokens (another text, tokenizer or window size)")
    }
    let clock = ContinuousClock.now
    var kl: [Double] = [], sameTop = 0, nll: [Double] = [], deltaP: [Double] = []
    for w in 0..<ref.windows {
        let window = Array(ids[(w * seqlen)..<((w + 1) * seqlen)])
        let logits = model.forward(window)
        logits.withUnsafeBufferPointer { p in
            for t in 0..<(seqlen - 1) {
                let n = w * (seqlen - 1) + t
                let row = p.baseAddress! + t * V
                let lse = logSumExp(row, V)
                var d = 0.0, qTop = 0.0
                for j in 0..<k {
                    let lp = Double(ref.topLogProbs[n * k + j])
                    let lq = Double(row[Int(ref.topIds[n * k + j])]) - lse
                    d += exp(lp) * (lp - lq)
                    qTop += exp(lq)
                }
                let restP = Double(ref.restLogMass[n])
                if restP > -.infinity {
                    // The model's mass outside the reference's top-k, floored so a model that puts (numerically) all
                    // its mass on those tokens still gives a finite KL.
                    let restQ = max(1 - qTop, 1e-30)
                    d += exp(restP) * (restP - log(restQ))
                }
                kl.append(d)
                if argmax(row, V) == Int(ref.topIds[n * k]) { sameTop += 1 }
                let tokenNLL = lse - Double(row[window[t + 1]])
                nll.append(tokenNLL)
                deltaP.append(exp(-tokenNLL) - exp(-Double(ref.nll[n])))
            }
        }
        progress?(w + 1, ref.windows, seconds(since: clock))
    }
    let n = Double(kl.count)
    let klStats = MetricValue(mean: kl)
    let top1 = Double(sameTop) / n
    let sorted = kl.sorted()
    func percentile(_ q: Double) -> Double {
        let x = q / 100 * (n - 1), i = Int(x.rounded(.down)), f = x - Double(i)
        return i + 1 < sorted.count ? sorted[i] * (1 - f) + sorted[i + 1] * f : sorted[i]
    }
    let pplRef = exp(ref.nll.map(Double.init).reduce(0, +) / n), ppl = exp(nll.reduce(0, +) / n)
    return KLDivergenceResult(
        windows: ref.windows, seqlen: seqlen, tokens: kl.count, topK: k, meanKL: klStats.value, meanKLStderr: klStats.stderr ?? 0,
        klPercentiles: ["max": sorted.last!, "99.9": percentile(99.9), "99": percentile(99), "95": percentile(95), "90": percentile(90),
                        "median": percentile(50), "10": percentile(10), "5": percentile(5), "1": percentile(1), "min": sorted[0]],
        sameTop1: top1, sameTop1Stderr: (top1 * (1 - top1) / n).squareRoot(),
        perplexityReference: pplRef, perplexity: ppl, deltaPerplexity: ppl - pplRef,
        meanDeltaP: deltaP.reduce(0, +) / n, rmsDeltaP: (deltaP.map { $0 * $0 }.reduce(0, +) / n).squareRoot(),
        seconds: seconds(since: clock))
}
