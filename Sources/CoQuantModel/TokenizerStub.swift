// TEMPORARY stand-in until the real tokenizer lands.
public final class Tokenizer: @unchecked Sendable {
    public init(tokenizerJSON path: String, tokenizerConfig configPath: String? = nil) throws { fatalError() }
    public init(gguf: GGUFFile) throws { fatalError() }
    public func encode(_ text: String, addSpecialTokens: Bool = true) -> [Int] { [] }
    public func decode(_ ids: [Int], skipSpecialTokens: Bool = false) -> String { "" }
    public let vocabSize: Int = 0
    public let bosTokenId: Int? = nil
    public let eosTokenIds: [Int] = []
    public let addsBOS: Bool = false
    public func token(_ id: Int) -> String? { nil }
    public var preTokenizerName: String { "" }
}
