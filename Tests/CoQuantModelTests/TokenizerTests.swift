import Foundation
import XCTest
@testable import CoQuantModel

/// Checks the tokenizer against ids made with HF `tokenizers` / transformers (Tests/Fixtures/*/README in
/// /work/shared/fixtures describe how): 40 texts per tokenizer, and the whole WikiText-2 test text.
final class TokenizerTests: XCTestCase {
    static let wikiTextPath = packageRoot + "/data/wikitext-2-raw-v1/test.gptq_join.txt"

    // Loaded once per test process: the Llama-3 tokenizer.json alone is 9 MB of JSON.
    static let llama3 = Result { try Tokenizer(tokenizerJSON: try llama3TokenizerJSON(),
                                               tokenizerConfig: fixture("llama3-tokenizer/tokenizer_config.json")) }
    static let smolJSON = Result { try Tokenizer(tokenizerJSON: fixture("smollm2/tokenizer.json"),
                                                 tokenizerConfig: fixture("smollm2/tokenizer_config.json")) }
    static let smolGGUF = Result { () throws -> Tokenizer? in
        guard FileManager.default.fileExists(atPath: smolLM2Path) else { return nil }
        return try Tokenizer(gguf: try GGUFFile(path: smolLM2Path))
    }
    static let qwenGGUF = Result { () throws -> Tokenizer? in
        guard FileManager.default.fileExists(atPath: qwen2Path) else { return nil }
        return try Tokenizer(gguf: try GGUFFile(path: qwen2Path))
    }

    static func fixture(_ name: String) -> String { fixturesDir + "/" + name }

    /// The Llama-3 tokenizer.json is stored gzip-compressed (9 MB → 3 MB); unpack it into a temporary directory.
    static func llama3TokenizerJSON() throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("coquant-tokenizer-tests-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let out = dir.appendingPathComponent("tokenizer.json")
        _ = FileManager.default.createFile(atPath: out.path, contents: nil)
        let gzip = Process()
        gzip.executableURL = URL(fileURLWithPath: "/bin/gzip")
        gzip.arguments = ["-dc", fixture("llama3-tokenizer/tokenizer.json.gz")]
        gzip.standardOutput = try FileHandle(forWritingTo: out)
        try gzip.run()
        gzip.waitUntilExit()
        guard gzip.terminationStatus == 0 else { throw ModelFileError(out.path, "gzip -dc failed") }
        return out.path
    }

    func skipUnlessPresent(_ t: Tokenizer?, _ file: String) throws -> Tokenizer {
        guard let t else {
            throw XCTSkip("\(file) not found in \(modelsDir) (set COQUANT_MODELS or run scripts/download-models.sh)")
        }
        return t
    }

    // MARK: Fixture texts

    struct Item {
        let key: String
        let text: String
        let textBytes: [UInt8]
        let ids: [Int]
        let idsNoSpecial: [Int]
        let tokens: [String]
        let decoded: String
    }

    static func items(_ fixtureDir: String) throws -> [Item] {
        let data = try Data(contentsOf: URL(fileURLWithPath: fixture(fixtureDir + "/tokenizer_fixture.json")))
        let root = try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let items = try XCTUnwrap(root["items"] as? [[String: Any]])
        return try items.map { o in
            // The text is rebuilt from utf8_hex so that nothing on the way can normalise it.
            let hex = Array(try XCTUnwrap(o["utf8_hex"] as? String).utf8)
            let bytes = stride(from: 0, to: hex.count, by: 2).map { UInt8(String(decoding: hex[$0..<$0 + 2], as: UTF8.self), radix: 16)! }
            return Item(key: try XCTUnwrap(o["key"] as? String), text: String(decoding: bytes, as: UTF8.self), textBytes: bytes,
                        ids: try XCTUnwrap(o["ids"] as? [Int]), idsNoSpecial: try XCTUnwrap(o["ids_no_special"] as? [Int]),
                        tokens: try XCTUnwrap(o["tokens"] as? [String]), decoded: try XCTUnwrap(o["decoded"] as? String))
        }
    }

    func checkItems(_ tok: Tokenizer, _ fixtureDir: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let items = try Self.items(fixtureDir)
        XCTAssertEqual(items.count, 40)
        for item in items {
            XCTAssertEqual(item.text.utf8.count, item.textBytes.count)
            assertSameIds(tok.encode(item.text), item.ids, "\(fixtureDir) \(item.key) ids", file: file, line: line)
            assertSameIds(tok.encode(item.text, addSpecialTokens: false), item.idsNoSpecial,
                          "\(fixtureDir) \(item.key) ids_no_special", file: file, line: line)
            // Byte comparison: String == would accept a canonically equivalent but different string.
            XCTAssertEqual(Array(tok.decode(item.ids).utf8), Array(item.decoded.utf8), "\(fixtureDir) \(item.key) decode",
                           file: file, line: line)
            XCTAssertEqual(Array(tok.decode(item.idsNoSpecial).utf8), item.textBytes, "\(fixtureDir) \(item.key) round trip",
                           file: file, line: line)
            XCTAssertEqual(item.ids.map { tok.token($0).map { Array($0.unicodeScalars) } },
                           item.tokens.map { Optional(Array($0.unicodeScalars)) }, "\(fixtureDir) \(item.key) tokens", file: file, line: line)
        }
    }

    func assertSameIds(_ got: [Int], _ want: [Int], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        guard got != want else { return }
        let i = (0..<min(got.count, want.count)).first { got[$0] != want[$0] } ?? min(got.count, want.count)
        let lo = max(0, i - 5)
        XCTFail("\(what): \(got.count) ids, expected \(want.count); first difference at \(i): got \(got[lo..<min(got.count, i + 8)]),"
                + " expected \(want[lo..<min(want.count, i + 8)])", file: file, line: line)
    }

    /// Encodes the whole WikiText-2 test text in one call (as GPTQ/QuaRot do) and compares with the reference ids.
    func checkWikiText(_ tok: Tokenizer, _ fixtureDir: String, _ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let text = String(decoding: try Data(contentsOf: URL(fileURLWithPath: Self.wikiTextPath)), as: UTF8.self)
        XCTAssertEqual(text.utf8.count, 1_296_370)
        let start = Date()
        let ids = tok.encode(text)
        let seconds = Date().timeIntervalSince(start)
        print("WikiText-2 test encode, \(name): \(ids.count) tokens in \(String(format: "%.2f", seconds)) s")
        assertSameIds(ids, try Self.safetensorsI32(Self.fixture(fixtureDir + "/wikitext2_test_ids.safetensors"), "ids"),
                      "\(name) WikiText-2 test", file: file, line: line)
        XCTAssertEqual(Array(tok.decode(ids, skipSpecialTokens: true).utf8), Array(text.utf8), "\(name) WikiText round trip",
                       file: file, line: line)
    }

    /// Minimal safetensors reader: u64 LE header length, JSON header, raw little-endian data.
    static func safetensorsI32(_ path: String, _ name: String) throws -> [Int] {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        let headerLength = Int(data.prefix(8).enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) })
        let header = try XCTUnwrap(try JSONSerialization.jsonObject(with: data.subdata(in: 8..<(8 + headerLength))) as? [String: Any])
        let entry = try XCTUnwrap(header[name] as? [String: Any])
        XCTAssertEqual(entry["dtype"] as? String, "I32")
        let offsets = try XCTUnwrap(entry["data_offsets"] as? [Int])
        let bytes = data.subdata(in: (8 + headerLength + offsets[0])..<(8 + headerLength + offsets[1]))
        return bytes.withUnsafeBytes { raw in
            (0..<(raw.count / 4)).map { Int(Int32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self))) }
        }
    }

    // MARK: Llama-3 (tokenizer.json)

    func testLlama3Texts() throws {
        let tok = try Self.llama3.get()
        XCTAssertEqual(tok.preTokenizerName, "llama3")
        XCTAssertEqual(tok.vocabSize, 128_257)
        XCTAssertEqual(tok.bosTokenId, 128_000)
        XCTAssertTrue(tok.addsBOS)
        XCTAssertEqual(tok.eosTokenIds.first, 128_001)   // <|end_of_text|> from tokenizer_config.json
        XCTAssertTrue(tok.eosTokenIds.contains(128_009))  // <|eot_id|>
        XCTAssertEqual(tok.token(128_256), "<|image|>")
        try checkItems(tok, "llama3-tokenizer")
        XCTAssertEqual(tok.decode(tok.encode("Hello world"), skipSpecialTokens: true), "Hello world")
    }

    func testLlama3WikiText() throws {
        try checkWikiText(try Self.llama3.get(), "llama3-tokenizer", "Llama-3.2 tokenizer.json")
    }

    // MARK: SmolLM2 (tokenizer.json and GGUF)

    func testSmolLM2JSONTexts() throws {
        let tok = try Self.smolJSON.get()
        XCTAssertEqual(tok.preTokenizerName, "gpt2")
        XCTAssertEqual(tok.vocabSize, 49_152)
        XCTAssertEqual(tok.bosTokenId, 1)
        XCTAssertFalse(tok.addsBOS)
        XCTAssertEqual(tok.eosTokenIds, [2, 0])   // <|im_end|>, then <|endoftext|>
        try checkItems(tok, "smollm2")
    }

    func testSmolLM2JSONWikiText() throws {
        try checkWikiText(try Self.smolJSON.get(), "smollm2", "SmolLM2 tokenizer.json")
    }

    func testSmolLM2GGUFTexts() throws {
        let tok = try skipUnlessPresent(try Self.smolGGUF.get(), "SmolLM2-135M-Instruct.Q4_1.gguf")
        XCTAssertEqual(tok.preTokenizerName, "gpt2")   // tokenizer.ggml.pre = "smollm", see Tokenizer.init(gguf:)
        XCTAssertEqual(tok.vocabSize, 49_152)
        XCTAssertEqual(tok.bosTokenId, 1)
        XCTAssertFalse(tok.addsBOS)
        XCTAssertEqual(tok.eosTokenIds, [2, 0])
        try checkItems(tok, "smollm2")
    }

    func testSmolLM2GGUFWikiText() throws {
        let tok = try skipUnlessPresent(try Self.smolGGUF.get(), "SmolLM2-135M-Instruct.Q4_1.gguf")
        try checkWikiText(tok, "smollm2", "SmolLM2 GGUF")
    }

    /// The digit-splitting pipeline of upstream SmolLM2 / llama.cpp "smollm" (not what the fixture ids use), checked
    /// against the fixture's record of how it differs.
    func testSmolLM2DigitSplitVariant() throws {
        var json = try XCTUnwrap(try JSONSerialization.jsonObject(
            with: Data(contentsOf: URL(fileURLWithPath: Self.fixture("smollm2/tokenizer.json")))) as? [String: Any])
        json["pre_tokenizer"] = ["type": "Sequence", "pretokenizers": [
            ["type": "Digits", "individual_digits": true],
            ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true]]]
        let tok = try Tokenizer(tokenizerJSON: try writeTemp(json, "smollm2-digits.json"))
        XCTAssertEqual(tok.preTokenizerName, "gpt2+digits")
        let plain = try Self.smolJSON.get()

        let fixtureData = try Data(contentsOf: URL(fileURLWithPath: Self.fixture("smollm2/tokenizer_fixture.json")))
        let header = try XCTUnwrap((try JSONSerialization.jsonObject(with: fixtureData) as? [String: Any])?["header"] as? [String: Any])
        let variant = try XCTUnwrap(header["digit_split_variant"] as? [String: Any])
        let examples = try XCTUnwrap((variant["divergence_examples"] as? [String: Any])?["examples"] as? [[String: Any]])
        XCTAssertFalse(examples.isEmpty)
        for e in examples {
            let text = try XCTUnwrap(e["text"] as? String)
            XCTAssertEqual(tok.encode(text), try XCTUnwrap(e["ids_digit_split"] as? [Int]), text)
            XCTAssertEqual(plain.encode(text), try XCTUnwrap(e["ids_transformers_gguf"] as? [Int]), text)
        }
        for item in try Self.items("smollm2") {
            XCTAssertEqual(tok.encode(item.text), item.ids, item.key)   // "texts_with_different_ids": []
        }
        let text = String(decoding: try Data(contentsOf: URL(fileURLWithPath: Self.wikiTextPath)), as: UTF8.self)
        let ids = tok.encode(text)
        XCTAssertEqual(ids.count, variant["wikitext_num_tokens"] as? Int)
        XCTAssertEqual(try sha256(ofInt32LE: ids), variant["wikitext_ids_int32le_sha256"] as? String)
    }

    // MARK: Qwen2 (GGUF)

    func testQwen2GGUFTexts() throws {
        let tok = try skipUnlessPresent(try Self.qwenGGUF.get(), "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
        XCTAssertEqual(tok.preTokenizerName, "qwen2")
        XCTAssertEqual(tok.vocabSize, 151_936)
        XCTAssertEqual(tok.bosTokenId, 151_643)
        XCTAssertFalse(tok.addsBOS)
        XCTAssertEqual(tok.eosTokenIds.first, 151_645)
        try checkItems(tok, "qwen2")
        XCTAssertEqual(tok.encode("<tool_call>", addSpecialTokens: false), [151_657])
    }

    func testQwen2GGUFWikiText() throws {
        let tok = try skipUnlessPresent(try Self.qwenGGUF.get(), "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
        try checkWikiText(tok, "qwen2", "Qwen2.5 GGUF")
    }

    /// Without the Qwen2 GGUF there are no merges to reproduce its ids, but its pre-tokenizer can still be checked:
    /// BPE never merges across pieces, so every piece boundary must be a boundary between the reference tokens.
    func testQwen2PreTokenizerCutsOnlyAtTokenBoundaries() throws {
        var checked = 0
        for item in try Self.items("qwen2") where !item.text.contains("<|") {
            var tokenEnds: Set<Int> = [0]
            var offset = 0
            for t in item.tokens {
                offset += ByteLevel.bytes(of: t).count
                tokenEnds.insert(offset)
            }
            XCTAssertEqual(offset, item.textBytes.count, item.key)
            for end in pieceEnds(.qwen2, item.textBytes) {
                XCTAssertTrue(tokenEnds.contains(end), "\(item.key): pre-token ends at byte \(end) inside a reference token")
            }
            checked += 1
        }
        XCTAssertEqual(checked, 39)
    }

    func pieceEnds(_ pre: PreTokenizer, _ bytes: [UInt8]) -> [Int] {
        let scalars = Array(String(decoding: bytes, as: UTF8.self).unicodeScalars)
        var offsets = [0]
        for s in scalars { offsets.append(offsets.last! + UTF8.width(s)) }
        let values = scalars.map(\.value)
        let classes = values.map(PreTokenizer.characterClass)
        var ends: [Int] = []
        values.withUnsafeBufferPointer { v in
            classes.withUnsafeBufferPointer { c in pre.split(v, c) { _, end in ends.append(offsets[end]) } }
        }
        return ends
    }

    func pieces(_ pre: PreTokenizer, _ text: String) -> [String] {
        let bytes = Array(text.utf8)
        var start = 0
        return pieceEnds(pre, bytes).map { end in
            defer { start = end }
            return String(decoding: bytes[start..<end], as: UTF8.self)
        }
    }

    func testPreTokenizerEdgeCases() {
        XCTAssertEqual(pieces(.gpt2, "a  b\n\n c"), ["a", " ", " b", "\n\n", " c"])
        XCTAssertEqual(pieces(.gpt2, "x \n\n\n 1st"), ["x", " \n\n\n", " 1", "st"])
        XCTAssertEqual(pieces(.gpt2, "it's IT'S"), ["it", "'s", " IT", "'", "S"])
        XCTAssertEqual(pieces(.llama3, "IT'S 12345 (x)  \n\n  y"), ["IT", "'S", " ", "123", "45", " (", "x", ")", "  \n\n", " ", " y"])
        XCTAssertEqual(pieces(.qwen2, "12345"), ["1", "2", "3", "4", "5"])
        XCTAssertEqual(pieces(.llama3, "a\u{a0}b\tc\u{200b}d"), ["a", "\u{a0}b", "\tc", "\u{200b}d"])
        XCTAssertEqual(pieces(.llama3, "end.\r\n\r\nnext  "), ["end", ".\r\n\r\n", "next", "  "])
        XCTAssertEqual(pieces(.gpt2Digits, "a12 b"), ["a", "1", "2", " b"])
        // NBSP is \s (White_Space); ZERO WIDTH SPACE and the BOM (Cf) are not.
        XCTAssertEqual(pieces(.gpt2, "a\u{a0}\u{a0}b\u{200b}\u{feff}c"), ["a", "\u{a0}", "\u{a0}", "b", "\u{200b}\u{feff}", "c"])
        // Case-folded contractions, including U+017F LONG S, only in the Qwen2 / Llama-3 regex.
        XCTAssertEqual(pieces(.llama3, "X'\u{17f}"), ["X", "'\u{17f}"])
    }

    // MARK: tokenizer.json pipeline variants (small synthetic vocabularies)

    /// A tokenizer.json with the 256 byte tokens, `extra` multi-byte tokens (each with the merge that makes it,
    /// built left to right), and the given pipeline parts.
    func syntheticJSON(preTokenizer: Any, normalizer: Any = NSNull(), extra: [String] = [],
                       added: [[String: Any]] = [], postProcessor: Any = NSNull()) -> [String: Any] {
        var vocab: [String: Int] = [:]
        for b in 0..<256 { vocab[String(ByteLevel.byteToChar[b])] = b }
        var merges: [String] = []
        for word in extra {
            let chars = ByteLevel.spell(Array(word.utf8)).unicodeScalars.map { String($0) }
            var left = chars[0]
            for c in chars.dropFirst() {
                merges.append(left + " " + c)
                left += c
                if vocab[left] == nil { vocab[left] = vocab.count }
            }
        }
        return ["version": "1.0", "added_tokens": added, "normalizer": normalizer, "pre_tokenizer": preTokenizer,
                "post_processor": postProcessor, "decoder": ["type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true],
                "model": ["type": "BPE", "dropout": NSNull(), "unk_token": NSNull(), "continuing_subword_prefix": "",
                          "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                          "vocab": vocab, "merges": merges] as [String: Any]]
    }

    static var gpt2PreTokenizer: [String: Any] { ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true] }

    func writeTemp(_ object: Any, _ name: String) throws -> String {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("coquant-tokenizer-tests-\(getpid())-\(name)")
        try JSONSerialization.data(withJSONObject: object).write(to: url)
        return url.path
    }

    func testQwen2PipelineIsRecognised() throws {
        let pipelineData = try Data(contentsOf: URL(fileURLWithPath: Self.fixture("qwen2/tokenizer_pipeline.json")))
        let pipeline = try XCTUnwrap(try JSONSerialization.jsonObject(with: pipelineData) as? [String: Any])
        var json = syntheticJSON(preTokenizer: pipeline["pre_tokenizer"]!, added: pipeline["added_tokens"] as! [[String: Any]],
                                 postProcessor: pipeline["post_processor"]!)
        json["normalizer"] = pipeline["normalizer"]
        let tok = try Tokenizer(tokenizerJSON: try writeTemp(json, "qwen2.json"), tokenizerConfig: Self.fixture("qwen2/tokenizer_config.json"))
        XCTAssertEqual(tok.preTokenizerName, "qwen2")
        XCTAssertEqual(tok.bosTokenId, 151_643)
        XCTAssertFalse(tok.addsBOS)
        XCTAssertEqual(tok.eosTokenIds, [151_645, 151_643])
        XCTAssertEqual(tok.encode("<|im_start|>hi<tool_call><|im_end|>"), [151_644, 0x68, 0x69, 151_657, 151_645])
        XCTAssertEqual(tok.decode([151_644, 0x68, 151_657], skipSpecialTokens: true), "h<tool_call>")   // <tool_call> is not special
    }

    func testNFCNormalizer() throws {
        let plain = try Tokenizer(tokenizerJSON: try writeTemp(syntheticJSON(preTokenizer: Self.gpt2PreTokenizer, extra: ["é"]), "plain.json"))
        let nfc = try Tokenizer(tokenizerJSON: try writeTemp(
            syntheticJSON(preTokenizer: Self.gpt2PreTokenizer, normalizer: ["type": "NFC"], extra: ["é"]), "nfc.json"))
        XCTAssertEqual(nfc.encode("e\u{301}"), nfc.encode("\u{e9}"))
        XCTAssertEqual(nfc.encode("\u{e9}").count, 1)
        XCTAssertEqual(plain.encode("e\u{301}").count, 3)
    }

    func testTemplateAndAddedTokenOptions() throws {
        let added: [[String: Any]] = [
            ["id": 300, "content": "<s>", "special": true, "normalized": false, "lstrip": false, "rstrip": false, "single_word": false],
            ["id": 301, "content": "<mask>", "special": true, "normalized": false, "lstrip": true, "rstrip": true, "single_word": false],
            ["id": 302, "content": "<ma", "special": false, "normalized": true, "lstrip": false, "rstrip": false, "single_word": false],
        ]
        let template: [String: Any] = ["type": "TemplateProcessing",
                                       "single": [["SpecialToken": ["id": "<s>", "type_id": 0]], ["Sequence": ["id": "A", "type_id": 0]]],
                                       "pair": [], "special_tokens": ["<s>": ["id": "<s>", "ids": [300], "tokens": ["<s>"]]]]
        let tok = try Tokenizer(tokenizerJSON: try writeTemp(
            syntheticJSON(preTokenizer: Self.gpt2PreTokenizer, added: added, postProcessor: template), "template.json"))
        XCTAssertEqual(tok.vocabSize, 303)
        XCTAssertEqual(tok.bosTokenId, 300)
        XCTAssertTrue(tok.addsBOS)
        XCTAssertEqual(tok.encode("a"), [300, 0x61])
        XCTAssertEqual(tok.encode("a", addSpecialTokens: false), [0x61])
        // Leftmost-longest, the stripping token swallowing the spaces around it; "<ma" only where "<mask>" is not.
        XCTAssertEqual(tok.encode("a  <mask>  b<mac", addSpecialTokens: false), [0x61, 301, 0x62, 302, 0x63])
        XCTAssertEqual(tok.decode([300, 0x61, 301], skipSpecialTokens: true), "a")
    }

    /// Invalid UTF-8 from a cut multi-byte character decodes like Rust's `String::from_utf8_lossy`: one U+FFFD per
    /// maximal invalid subsequence.
    func testLossyDecode() throws {
        let tok = try Tokenizer(tokenizerJSON: try writeTemp(syntheticJSON(preTokenizer: Self.gpt2PreTokenizer), "bytes.json"))
        XCTAssertEqual(tok.decode([0xE2, 0x82, 0x41]), "\u{FFFD}A")
        XCTAssertEqual(tok.decode([0xE2, 0x82, 0xAC]), "€")
        XCTAssertEqual(tok.decode([0xF0, 0x9F, 0x98]), "\u{FFFD}")
        XCTAssertEqual(tok.decode([0xFF, 0x41]), "\u{FFFD}A")
        XCTAssertEqual(tok.decode([0xC0, 0x80]), "\u{FFFD}\u{FFFD}")
        XCTAssertEqual(tok.decode([0xED, 0xA0, 0x80]), "\u{FFFD}\u{FFFD}\u{FFFD}")
        XCTAssertEqual(tok.decode([-1, 5000, 0x41]), "A")
    }

    // MARK: Bad input

    func assertModelFileError(_ file: String, mentioning words: [String], _ body: () throws -> Void,
                              sourceFile: StaticString = #filePath, line: UInt = #line) {
        do {
            try body()
            XCTFail("no error for \(file)", file: sourceFile, line: line)
        } catch let e as ModelFileError {
            XCTAssertEqual(e.file, file, file: sourceFile, line: line)
            for w in words { XCTAssertTrue(e.problem.contains(w), "'\(e.problem)' does not mention '\(w)'", file: sourceFile, line: line) }
        } catch {
            XCTFail("not a ModelFileError: \(error)", file: sourceFile, line: line)
        }
    }

    func testBadTokenizerFiles() throws {
        let missing = "/nonexistent/tokenizer.json"
        assertModelFileError(missing, mentioning: ["no such file"]) { _ = try Tokenizer(tokenizerJSON: missing) }

        let malformed = FileManager.default.temporaryDirectory.appendingPathComponent("coquant-tokenizer-tests-\(getpid())-bad.json").path
        try Data("{\"model\": {\"type\": \"BPE\",".utf8).write(to: URL(fileURLWithPath: malformed))
        assertModelFileError(malformed, mentioning: ["JSON"]) { _ = try Tokenizer(tokenizerJSON: malformed) }

        var unigram = syntheticJSON(preTokenizer: Self.gpt2PreTokenizer)
        unigram["model"] = ["type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0]]]
        let unigramPath = try writeTemp(unigram, "unigram.json")
        assertModelFileError(unigramPath, mentioning: ["Unigram"]) { _ = try Tokenizer(tokenizerJSON: unigramPath) }

        let metaspace = try writeTemp(syntheticJSON(preTokenizer: ["type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true]),
                                      "metaspace.json")
        assertModelFileError(metaspace, mentioning: ["pre_tokenizer", "Metaspace"]) { _ = try Tokenizer(tokenizerJSON: metaspace) }

        let otherRegex = try writeTemp(syntheticJSON(preTokenizer: ["type": "Sequence", "pretokenizers": [
            ["type": "Split", "pattern": ["Regex": "\\s+"], "behavior": "Isolated", "invert": false],
            ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false]]]), "regex.json")
        assertModelFileError(otherRegex, mentioning: ["pre_tokenizer", "\\\\s+"]) { _ = try Tokenizer(tokenizerJSON: otherRegex) }

        let nfkc = try writeTemp(syntheticJSON(preTokenizer: Self.gpt2PreTokenizer, normalizer: ["type": "NFKC"]), "nfkc.json")
        assertModelFileError(nfkc, mentioning: ["normalizer", "NFKC"]) { _ = try Tokenizer(tokenizerJSON: nfkc) }

        let good = try writeTemp(syntheticJSON(preTokenizer: Self.gpt2PreTokenizer), "good.json")
        let missingConfig = "/nonexistent/tokenizer_config.json"
        assertModelFileError(missingConfig, mentioning: []) { _ = try Tokenizer(tokenizerJSON: good, tokenizerConfig: missingConfig) }
        let badConfig = try writeTemp(["bos_token": "<|nope|>"], "config.json")
        assertModelFileError(badConfig, mentioning: ["<|nope|>"]) { _ = try Tokenizer(tokenizerJSON: good, tokenizerConfig: badConfig) }
    }

    func testBadGGUFTokenizers() throws {
        let base: [(String, GGUFTestValue)] = [
            ("tokenizer.ggml.tokens", .strings((0..<256).map { String(ByteLevel.byteToChar[$0]) })),
            ("tokenizer.ggml.merges", .strings([])),
        ]
        let llama = try writeGGUF(base + [("tokenizer.ggml.model", .string("llama"))], "llama.gguf")
        assertModelFileError(llama, mentioning: ["'llama'"]) { _ = try Tokenizer(gguf: try GGUFFile(path: llama)) }
        let falcon = try writeGGUF(base + [("tokenizer.ggml.model", .string("gpt2")), ("tokenizer.ggml.pre", .string("falcon"))], "falcon.gguf")
        assertModelFileError(falcon, mentioning: ["'falcon'"]) { _ = try Tokenizer(gguf: try GGUFFile(path: falcon)) }
        let noTokens = try writeGGUF([("tokenizer.ggml.model", .string("gpt2"))], "notokens.gguf")
        assertModelFileError(noTokens, mentioning: ["tokenizer.ggml.tokens"]) { _ = try Tokenizer(gguf: try GGUFFile(path: noTokens)) }

        let ok = try Tokenizer(gguf: try GGUFFile(path: try writeGGUF(base + [
            ("tokenizer.ggml.model", .string("gpt2")), ("tokenizer.ggml.pre", .string("llama-bpe")),
            ("tokenizer.ggml.bos_token_id", .uint32(0x21)),
        ], "llama-bpe.gguf")))
        XCTAssertEqual(ok.preTokenizerName, "llama3")
        XCTAssertTrue(ok.addsBOS)   // llama.cpp's default for llama-bpe when add_bos_token is absent
        XCTAssertEqual(ok.encode("hi"), [0x21, 0x68, 0x69])
    }

    enum GGUFTestValue {
        case string(String), strings([String]), uint32(UInt32)
    }

    /// A GGUF v3 file with metadata only (no tensors).
    func writeGGUF(_ kvs: [(String, GGUFTestValue)], _ name: String) throws -> String {
        var d = Data()
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { d.append(contentsOf: $0) } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { d.append(contentsOf: $0) } }
        func str(_ s: String) { u64(UInt64(s.utf8.count)); d.append(contentsOf: Array(s.utf8)) }
        d.append(contentsOf: Array("GGUF".utf8))
        u32(3)
        u64(0)
        u64(UInt64(kvs.count))
        for (k, v) in kvs {
            str(k)
            switch v {
            case .string(let s): u32(8); str(s)
            case .uint32(let x): u32(4); u32(x)
            case .strings(let a): u32(9); u32(8); u64(UInt64(a.count)); a.forEach(str)
            }
        }
        while d.count % 32 != 0 { d.append(0) }
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("coquant-tokenizer-tests-\(getpid())-\(name)")
        try d.write(to: url)
        return url.path
    }

    func sha256(ofInt32LE ids: [Int]) throws -> String {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("coquant-tokenizer-tests-\(getpid())-ids.bin")
        var d = Data(capacity: ids.count * 4)
        for id in ids { withUnsafeBytes(of: Int32(id).littleEndian) { d.append(contentsOf: $0) } }
        try d.write(to: url)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/sha256sum")
        p.arguments = [url.path]
        let pipe = Pipe()
        p.standardOutput = pipe
        try p.run()
        let out = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return String(String(decoding: out, as: UTF8.self).prefix(64))
    }
}
