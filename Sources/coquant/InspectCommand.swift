import ArgumentParser
import CoQuantModel
import CoQuantRuntime
import Foundation

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show a model's architecture, tensor table, storage types and parameter count.")

    @Argument(help: "Model folder or GGUF file.")
    var model: String

    @Flag(help: "List every tensor (default: a summary by storage type).")
    var tensors = false

    @OptionGroup var output: OutputOptions

    struct Tensor: Codable { let name: String; let dtype: String; let shape: [Int] }
    struct Report: Codable {
        let path: String
        let format: String
        let config: ModelConfiguration
        let parameters: Int
        let storageTypes: [String: Int]
        let tokenizer: String?
        let tensors: [Tensor]
    }

    func run() throws {
        // A quantized folder loads packed (as it runs), not expanded to fp32.
        let loaded = try Runtime.load(model)
        let c = loaded.model.config
        var types: [String: Int] = [:]
        for t in loaded.tensorTable { types[t.dtype, default: 0] += 1 }
        let tok = loaded.tokenizer.map { "byte-level BPE, \($0.vocabSize) tokens, pre-tokenizer \($0.preTokenizerName), BOS \($0.addsBOS ? "added" : "not added")" }
        let report = Report(path: model, format: loaded.format, config: c, parameters: loaded.model.parameterCount,
                            storageTypes: types, tokenizer: tok,
                            tensors: loaded.tensorTable.map { Tensor(name: $0.name, dtype: $0.dtype, shape: $0.shape) })
        if output.json { try printJSON(report); return }
        print("\(model) (\(loaded.format)\(loaded.quantizationConfig.map { ", \($0.scheme) \($0.method), format v\($0.formatVersion)" } ?? ""))")
        print("architecture: \(c.modelType), \(c.numHiddenLayers) layers, hidden \(c.hiddenSize), heads \(c.numAttentionHeads) / \(c.numKeyValueHeads) KV, head_dim \(c.headDim), FFN \(c.intermediateSize), vocab \(c.vocabSize)")
        print("rope: θ \(c.ropeTheta)\(c.ropeScaling.map { ", \($0.ropeType) scaling" } ?? ""), rms_norm_eps \(c.rmsNormEps), context \(c.maxPositionEmbeddings)")
        print("lm_head: \(c.tieWordEmbeddings ? "tied to embed_tokens" : "separate"), q/k/v bias: \(c.qkvBias ? "yes" : "no")")
        print("tokenizer: \(tok ?? "none")")
        print("storage: " + types.sorted { $0.key < $1.key }.map { "\($0.key) ×\($0.value)" }.joined(separator: ", "))
        if tensors {
            for t in loaded.tensorTable { print("  \(t.name.padding(toLength: 40, withPad: " ", startingAt: 0)) \(t.dtype.padding(toLength: 6, withPad: " ", startingAt: 0)) \(t.shape)") }
        }
        print("parameters: \(loaded.model.parameterCount)")
    }
}
