import CoQuantTensor
import Foundation

/// How the next token is chosen: greedy when `temperature` is 0, else softmax(logits / temperature) restricted to
/// the smallest set of tokens whose probability reaches `topP` (nucleus sampling).
public struct SamplingOptions: Sendable {
    public var temperature: Double = 0
    public var topP: Double = 1
    public var seed: UInt64 = 0
    public init(temperature: Double = 0, topP: Double = 1, seed: UInt64 = 0) {
        self.temperature = temperature
        self.topP = topP
        self.seed = seed
    }
}

public struct Sampler {
    let options: SamplingOptions
    var rng: SeededGenerator

    public init(_ options: SamplingOptions) {
        self.options = options
        rng = SeededGenerator(seed: options.seed)
    }

    public mutating func next(_ logits: ArraySlice<Float>) -> Int {
        let base = logits.startIndex
        if options.temperature <= 0 {
            var best = base
            for i in logits.indices where logits[i] > logits[best] { best = i }
            return best - base
        }
        let mx = Double(logits.max()!)
        var probs = logits.map { exp((Double($0) - mx) / options.temperature) }
        let total = probs.reduce(0, +)
        for i in probs.indices { probs[i] /= total }
        var order = Array(probs.indices)
        order.sort { probs[$0] > probs[$1] }
        var kept = 0, mass = 0.0
        while kept < order.count && (kept == 0 || mass < options.topP) { mass += probs[order[kept]]; kept += 1 }
        var u = rng.nextDouble() * mass
        for i in order[0..<kept] {
            u -= probs[i]
            if u <= 0 { return i }
        }
        return order[kept - 1]
    }
}

/// Prefills `prompt` into a fresh KV cache, then samples up to `maxTokens` tokens, stopping at any of `stopIds`.
/// `onToken` sees each new id as it is produced and may return false to stop early; `onLogits` sees the logits each
/// id was chosen from.
public func generate(model: LlamaModel, prompt: [Int], maxTokens: Int, sampling: SamplingOptions = .init(),
                     stopIds: Set<Int> = [], onLogits: ([Float]) -> Void = { _ in }, onToken: (Int) -> Bool = { _ in true }) -> [Int] {
    guard maxTokens > 0, !prompt.isEmpty else { return [] }
    let cache = model.makeCache(capacity: prompt.count + maxTokens)
    var sampler = Sampler(sampling)
    var logits = model.forward(prompt, cache: cache, logits: .last)
    var out: [Int] = []
    while out.count < maxTokens {
        onLogits(logits)
        let id = sampler.next(logits[...])
        out.append(id)
        if stopIds.contains(id) || !onToken(id) || out.count == maxTokens { break }
        logits = model.forward([id], cache: cache, logits: .last)
    }
    return out
}
