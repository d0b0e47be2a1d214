import CoQuantModel
import CoQuantTensor
import Foundation

/// WikiText-2 perplexity with the GPTQ/QuaRot protocol (CONVENTIONS.md §3.1): the whole test text tokenized once,
/// non-overlapping windows of `seqlen` tokens (tail dropped, no BOS inserted per window), every window scored on
/// all its next-token predictions, PPL = exp(mean over windows of the window's mean NLL).
public struct PerplexityResult: Codable, Sendable {
    public let protocolName: String
    public let seqlen: Int
    public let windows: Int
    public let windowsAvailable: Int
    public let totalTokens: Int
    public let perWindowMeanNLL: [Double]
    public let meanNLL: Double
    public let perplexity: Double
    /// Standard error of the perplexity from the spread of window NLLs (delta method), as llama.cpp prints ±.
    public let perplexityStdError: Double
    public let seconds: Double
    public let tokensPerSecond: Double

    enum CodingKeys: String, CodingKey {
        case protocolName = "protocol", seqlen, windows, windowsAvailable = "windows_available",
             totalTokens = "total_tokens", perWindowMeanNLL = "per_window_mean_nll", meanNLL = "mean_nll", perplexity,
             perplexityStdError = "perplexity_stderr", seconds, tokensPerSecond = "tokens_per_second"
    }

    public var summary: String {
        String(format: "perplexity: %.4f ± %.4f (%d windows × %d tokens)", perplexity, perplexityStdError, windows, seqlen)
    }
}

public struct PerplexityError: Error, CustomStringConvertible {
    public let description: String
}

/// Scores the first `windows` (nil: all) windows of `ids`. `done` holds the mean NLLs of the first windows an
/// interrupted run finished (a window's NLL depends on that window alone, so they are taken as they are); `onWindow`
/// runs after each newly scored window, so a caller can checkpoint it, then `progress(done, total, secondsSoFar)`.
/// `seconds` and the rate in the result cover this call's windows only.
public func perplexity(model: LlamaModel, ids: [Int], seqlen: Int, windows: Int? = nil, done: [Double] = [],
                       progress: ((Int, Int, Double) -> Void)? = nil,
                       onWindow: ((Int, Double) throws -> Void)? = nil) throws -> PerplexityResult {
    guard seqlen >= 2 else { throw PerplexityError(description: "--seqlen must be at least 2 (got \(seqlen))") }
    let available = ids.count / seqlen
    guard available > 0 else {
        throw PerplexityError(description: "the text has \(ids.count) tokens, fewer than one window of \(seqlen)")
    }
    let n = min(windows ?? available, available)
    guard n > 0 else { throw PerplexityError(description: "--windows must be at least 1") }
    guard done.count <= n else {
        throw PerplexityError(description: "\(done.count) windows already scored, but this run scores only \(n)")
    }
    let clock = ContinuousClock.now
    var nlls = done
    for w in done.count..<n {
        let window = Array(ids[(w * seqlen)..<((w + 1) * seqlen)])
        let logits = model.forward(window)
        let nll = meanNextTokenNLL(logits: logits, ids: window, vocab: model.config.vocabSize)
        try onWindow?(w, nll)
        nlls.append(nll)
        progress?(w + 1, n, seconds(since: clock))
    }
    let mean = nlls.reduce(0, +) / Double(n)
    let variance = n > 1 ? nlls.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(n - 1) : 0
    let ppl = exp(mean)
    let elapsed = seconds(since: clock)
    return PerplexityResult(protocolName: "gptq-wikitext2", seqlen: seqlen, windows: n, windowsAvailable: available,
                            totalTokens: ids.count, perWindowMeanNLL: nlls, meanNLL: mean, perplexity: ppl,
                            perplexityStdError: ppl * (variance / Double(n)).squareRoot(),
                            seconds: elapsed, tokensPerSecond: Double((n - done.count) * seqlen) / max(elapsed, 1e-9))
}

/// Mean over t of `logsumexp(logits[t]) − logits[t, ids[t+1]]`, for rows t = 0 ..< T−1 of logits [T, V].
public func meanNextTokenNLL(logits: [Float], ids: [Int], vocab: Int) -> Double {
    let rows = ids.count - 1
    var nll = [Double](repeating: 0, count: rows)
    logits.withUnsafeBufferPointer { pl in
        nll.withUnsafeMutableBufferPointer { pn in
            let chunks = rows >= 64 ? 2 : 1
            parallelFor(chunks) { c in
                for t in stride(from: c, to: rows, by: chunks) {
                    let row = pl.baseAddress! + t * vocab
                    pn[t] = logSumExp(row, vocab) - Double(row[ids[t + 1]])
                }
            }
        }
    }
    return nll.reduce(0, +) / Double(rows)
}

/// log Σ exp(x) over one row: exponentials in SIMD float32, partial sums of 256 promoted to float64, so a
/// 150k-entry vocabulary row loses none of its small terms (float32 cross-entropy does, by ≈ 2e-5 nats).
public func logSumExp(_ x: UnsafePointer<Float>, _ n: Int) -> Double {
    let mx = maxElement(x, n)
    var total = 0.0
    var i = 0
    while i < n {
        let end = min(i + 256, n)
        var s8 = SIMD8<Float>()
        var s: Float = 0
        while i + 8 <= end {
            s8 += exp8(UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self) - mx)
            i += 8
        }
        while i < end { s += expf(x[i] - mx); i += 1 }
        total += Double(s8.sum()) + Double(s)
    }
    return Double(mx) + log(total)
}
