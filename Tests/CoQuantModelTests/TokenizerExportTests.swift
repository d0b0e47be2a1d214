import Foundation
import XCTest
@testable import CoQuantModel

/// `Tokenizer.write(tokenizerJSON:tokenizerConfig:)`: every supported tokenizer, whether read from a tokenizer.json
/// or built from GGUF metadata, is written out and read back, and the copy must behave identically.
final class TokenizerExportTests: XCTestCase {
    /// A fresh directory per test, removed afterwards.
    var dir: String = ""

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory
            .appendingPathComponent("coquant-tokenizer-export-\(getpid())-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// Writes `tok` into `dir` and reads the two files back.
    func roundTrip(_ tok: Tokenizer, file: StaticString = #filePath, line: UInt = #line) throws -> Tokenizer {
        let json = dir + "/tokenizer.json", config = dir + "/tokenizer_config.json"
        try tok.write(tokenizerJSON: json, tokenizerConfig: config)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).sorted(),
                       ["tokenizer.json", "tokenizer_config.json"], "no temporary files left behind", file: file, line: line)
        return try Tokenizer(tokenizerJSON: json, tokenizerConfig: config)
    }

    /// The first 200 KB of the WikiText-2 test text, cut at a character boundary.
    static let wikiTextPrefix: String? = {
        guard let data = FileManager.default.contents(atPath: TokenizerTests.wikiTextPath) else { return nil }
        var bytes = Array(data.prefix(200 * 1024))
        while let last = bytes.last, last & 0xC0 == 0x80 || last >= 0xC0 { bytes.removeLast() }   // drop a cut character
        return String(decoding: bytes, as: UTF8.self)
    }()

    func assertSameIds(_ got: [Int], _ want: [Int], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        guard got != want else { return }
        let i = (0..<min(got.count, want.count)).first { got[$0] != want[$0] } ?? min(got.count, want.count)
        XCTFail("\(what): \(got.count) ids vs \(want.count); first difference at \(i)", file: file, line: line)
    }

    /// Same properties, the same ids for the 40 fixture texts and the WikiText-2 prefix (with and without special
    /// tokens), the same decoding of those ids and the same text for every id.
    func assertSameBehaviour(_ back: Tokenizer, _ tok: Tokenizer, _ fixtureDir: String,
                             file: StaticString = #filePath, line: UInt = #line) throws {
        XCTAssertEqual(back.vocabSize, tok.vocabSize, "vocabSize", file: file, line: line)
        XCTAssertEqual(back.bosTokenId, tok.bosTokenId, "bosTokenId", file: file, line: line)
        XCTAssertEqual(back.eosTokenIds, tok.eosTokenIds, "eosTokenIds", file: file, line: line)
        XCTAssertEqual(back.addsBOS, tok.addsBOS, "addsBOS", file: file, line: line)
        XCTAssertEqual(back.preTokenizerName, tok.preTokenizerName, "preTokenizerName", file: file, line: line)

        let items = try TokenizerTests.items(fixtureDir)
        XCTAssertEqual(items.count, 40, file: file, line: line)
        var texts = items.map { ($0.key, $0.text) }
        let wiki = try XCTUnwrap(Self.wikiTextPrefix, "\(TokenizerTests.wikiTextPath) is missing", file: file, line: line)
        XCTAssertGreaterThan(wiki.utf8.count, 200_000, file: file, line: line)
        texts.append(("WikiText-2 test, first 200 KB", wiki))
        for (key, text) in texts {
            let ids = tok.encode(text)
            assertSameIds(back.encode(text), ids, "\(fixtureDir) \(key)", file: file, line: line)
            assertSameIds(back.encode(text, addSpecialTokens: false), tok.encode(text, addSpecialTokens: false),
                          "\(fixtureDir) \(key) without special tokens", file: file, line: line)
            XCTAssertEqual(Array(back.decode(ids).utf8), Array(tok.decode(ids).utf8), "\(fixtureDir) \(key) decode",
                           file: file, line: line)
            XCTAssertEqual(Array(back.decode(ids, skipSpecialTokens: true).utf8), Array(tok.decode(ids, skipSpecialTokens: true).utf8),
                           "\(fixtureDir) \(key) decode skipping special tokens", file: file, line: line)
        }
        for item in items {   // the reference ids too: they contain special tokens the texts may not produce
            XCTAssertEqual(Array(back.decode(item.ids).utf8), Array(tok.decode(item.ids).utf8), "\(item.key) reference ids",
                           file: file, line: line)
        }

        var differing: [Int] = []
        for id in 0..<tok.vocabSize + 2 where back.token(id) != tok.token(id) || back.decode([id]) != tok.decode([id])
            || back.decode([id], skipSpecialTokens: true) != tok.decode([id], skipSpecialTokens: true) {
            differing.append(id)
        }
        XCTAssertEqual(differing.prefix(10), [], "ids whose token or decoding differ", file: file, line: line)
    }

    func skipUnlessPresent(_ t: Tokenizer?, _ file: String) throws -> Tokenizer {
        guard let t else {
            throw XCTSkip("\(file) not found in \(modelsDir) (set COQUANT_MODELS or run scripts/download-models.sh)")
        }
        return t
    }

    // MARK: tokenizer.json → tokenizer.json

    func testSmolLM2JSONRoundTrip() throws {
        let tok = try TokenizerTests.smolJSON.get()
        try assertSameBehaviour(try roundTrip(tok), tok, "smollm2")
    }

    func testLlama3JSONRoundTrip() throws {
        let tok = try TokenizerTests.llama3.get()
        XCTAssertTrue(tok.addsBOS)
        let back = try roundTrip(tok)
        try assertSameBehaviour(back, tok, "llama3-tokenizer")

        // The BOS comes from a TemplateProcessing post-processor, repeated by add_bos_token in the config.
        let root = try jsonObject(dir + "/tokenizer.json")
        let post = try XCTUnwrap(root["post_processor"] as? [String: Any])
        XCTAssertEqual(post["type"] as? String, "TemplateProcessing")
        let specials = try XCTUnwrap(post["special_tokens"] as? [String: Any])
        XCTAssertEqual((specials["<|begin_of_text|>"] as? [String: Any])?["ids"] as? [Int], [128_000])
        let config = try jsonObject(dir + "/tokenizer_config.json")
        XCTAssertEqual(config["add_bos_token"] as? Bool, true)
        XCTAssertEqual(config["bos_token"] as? String, "<|begin_of_text|>")
        XCTAssertEqual(config["eos_token"] as? String, "<|end_of_text|>")
        let model = try XCTUnwrap(root["model"] as? [String: Any])
        XCTAssertEqual(model["ignore_merges"] as? Bool, false)
    }

    /// The digit-splitting variant of the SmolLM2 pipeline (the fourth pre-tokenizer kind).
    func testDigitSplitRoundTrip() throws {
        var json = try jsonObject(TokenizerTests.fixture("smollm2/tokenizer.json"))
        json["pre_tokenizer"] = ["type": "Sequence", "pretokenizers": [
            ["type": "Digits", "individual_digits": true],
            ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true]]]
        let path = dir + "/digits-in.json"
        try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: path))
        let tok = try Tokenizer(tokenizerJSON: path, tokenizerConfig: TokenizerTests.fixture("smollm2/tokenizer_config.json"))
        try FileManager.default.removeItem(atPath: path)
        XCTAssertEqual(tok.preTokenizerName, "gpt2+digits")
        let back = try roundTrip(tok)
        try assertSameBehaviour(back, tok, "smollm2")
        XCTAssertEqual(back.encode("a 2024 b"), tok.encode("a 2024 b"))
    }

    // MARK: GGUF → tokenizer.json

    func testSmolLM2GGUFRoundTrip() throws {
        let tok = try skipUnlessPresent(try TokenizerTests.smolGGUF.get(), "SmolLM2-135M-Instruct.Q4_1.gguf")
        try assertSameBehaviour(try roundTrip(tok), tok, "smollm2")
        let config = try jsonObject(dir + "/tokenizer_config.json")
        XCTAssertEqual(config["add_bos_token"] as? Bool, false)
        XCTAssertEqual(config["tokenizer_class"] as? String, "PreTrainedTokenizerFast")
        // The GGUF's chat template travels into tokenizer_config.json and back (exports write it on).
        let template = try XCTUnwrap(tok.chatTemplate, "the SmolLM2 GGUF has tokenizer.chat_template")
        XCTAssertTrue(template.contains("<|im_start|>"))
        XCTAssertEqual(config["chat_template"] as? String, template)
        XCTAssertEqual(try roundTrip(tok).chatTemplate, template)
    }

    func testQwen2GGUFRoundTrip() throws {
        let tok = try skipUnlessPresent(try TokenizerTests.qwenGGUF.get(), "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
        let back = try roundTrip(tok)
        try assertSameBehaviour(back, tok, "qwen2")
        XCTAssertEqual(back.encode("<tool_call>", addSpecialTokens: false), [151_657])
        let root = try jsonObject(dir + "/tokenizer.json")
        let pre = try XCTUnwrap(root["pre_tokenizer"] as? [String: Any])
        let split = try XCTUnwrap((pre["pretokenizers"] as? [[String: Any]])?.first)
        XCTAssertEqual((split["pattern"] as? [String: Any])?["Regex"] as? String, PreTokenizer.qwen2Pattern)
    }

    // MARK: Options of a small synthetic tokenizer

    /// NFC, an unknown token (the vocabulary lacks byte 0xC3), added tokens with every flag, a BOS + EOS template,
    /// ignore_merges. Ids are laid out as `tokenizers` files have them (contiguous, added tokens after the vocabulary,
    /// `<unk>` in it), so the written file is valid for `tokenizers` too.
    func testSyntheticOptionsRoundTrip() throws {
        func byte(_ b: Int) -> Int { b < 0xC3 ? b : b - 1 }   // id of a byte's token
        var vocab: [String: Int] = [:]
        for b in 0..<256 where b != 0xC3 { vocab[String(ByteLevel.byteToChar[b])] = byte(b) }
        vocab["Ġt"] = 255; vocab["Ġth"] = 256; vocab["<unk>"] = 257
        let (unk, bos, eos, mask, ma, cafe, quoted) = (257, 258, 259, 260, 261, 262, 263)
        func token(_ id: Int, _ content: String, special: Bool, normalized: Bool, strip: Bool = false) -> [String: Any] {
            ["id": id, "content": content, "special": special, "normalized": normalized, "lstrip": strip, "rstrip": strip,
             "single_word": false]
        }
        let added: [[String: Any]] = [
            token(unk, "<unk>", special: true, normalized: false),
            token(bos, "<s>", special: true, normalized: false),
            token(eos, "</s>", special: true, normalized: false),
            token(mask, "<mask>", special: true, normalized: false, strip: true),
            token(ma, "<ma", special: false, normalized: true),
            token(cafe, "caf\u{e9}", special: false, normalized: true),
            token(quoted, "a \"quoted\"\\\t\u{1}", special: false, normalized: false),
        ]
        let template: [String: Any] = [
            "type": "TemplateProcessing",
            "single": [["SpecialToken": ["id": "<s>", "type_id": 0]], ["Sequence": ["id": "A", "type_id": 0]],
                       ["SpecialToken": ["id": "</s>", "type_id": 0]]],
            "pair": [],
            "special_tokens": ["<s>": ["id": "<s>", "ids": [bos], "tokens": ["<s>"]], "</s>": ["id": "</s>", "ids": [eos], "tokens": ["</s>"]]]]
        let json: [String: Any] = [
            "version": "1.0", "added_tokens": added, "normalizer": ["type": "NFC"],
            "pre_tokenizer": ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true],
            "post_processor": template,
            "decoder": ["type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true],
            "model": ["type": "BPE", "unk_token": "<unk>", "ignore_merges": true, "vocab": vocab, "merges": [["Ġ", "t"], ["Ġt", "h"]]] as [String: Any]]
        let path = dir + "/synthetic-in.json"
        try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: path))
        let tok = try Tokenizer(tokenizerJSON: path)
        try FileManager.default.removeItem(atPath: path)
        XCTAssertTrue(tok.addsBOS)

        let back = try roundTrip(tok)
        XCTAssertEqual(back.vocabSize, 264)
        XCTAssertEqual(back.bosTokenId, bos)
        XCTAssertTrue(back.addsBOS)
        XCTAssertEqual(back.eosTokenIds, tok.eosTokenIds)
        let texts = ["the <mask>  x<mac", "cafe\u{301} caf\u{e9} é", "a \"quoted\"\\\t\u{1} the", "", " th th"]
        for text in texts {
            XCTAssertEqual(back.encode(text), tok.encode(text), text)
            XCTAssertEqual(back.encode(text, addSpecialTokens: false), tok.encode(text, addSpecialTokens: false), text)
            let ids = tok.encode(text)
            XCTAssertEqual(back.decode(ids), tok.decode(ids), text)
            XCTAssertEqual(back.decode(ids, skipSpecialTokens: true), tok.decode(ids, skipSpecialTokens: true), text)
        }
        XCTAssertEqual(tok.encode("the <mask>  x<mac"), [bos, 0x74, 0x68, 0x65, mask, 0x78, ma, 0x63, eos])
        XCTAssertEqual(tok.encode("\u{e9}", addSpecialTokens: false), [unk, byte(0xA9)])   // 0xC3 is unknown
        XCTAssertEqual(tok.encode("cafe\u{301}", addSpecialTokens: false), [cafe])         // NFC, then the added token
        XCTAssertEqual(tok.encode(" th th a \"quoted\"\\\t\u{1}", addSpecialTokens: false), [256, 256, 0x20, quoted])
        for id in 0..<270 { XCTAssertEqual(back.token(id), tok.token(id), "token \(id)") }

        // The written files: standard schema, with add_bos_token / add_eos_token matching the template.
        let root = try jsonObject(dir + "/tokenizer.json")
        let model = try XCTUnwrap(root["model"] as? [String: Any])
        XCTAssertEqual(model["unk_token"] as? String, "<unk>")
        XCTAssertEqual(model["ignore_merges"] as? Bool, true)
        XCTAssertEqual(model["merges"] as? [String], ["Ġ t", "Ġt h"])
        XCTAssertEqual((root["normalizer"] as? [String: Any])?["type"] as? String, "NFC")
        let addedOut = try XCTUnwrap(root["added_tokens"] as? [[String: Any]])
        XCTAssertEqual(addedOut.count, added.count)
        for (a, b) in zip(addedOut, added) {
            XCTAssertEqual(a["id"] as? Int, b["id"] as? Int)
            XCTAssertEqual(a["content"] as? String, b["content"] as? String)
            for key in ["special", "normalized", "lstrip", "rstrip", "single_word"] {
                XCTAssertEqual(a[key] as? Bool, b[key] as? Bool, "\(b["content"]!) \(key)")
            }
        }
        let config = try jsonObject(dir + "/tokenizer_config.json")
        XCTAssertEqual(config["add_bos_token"] as? Bool, true)
        XCTAssertEqual(config["bos_token"] as? String, "<s>")
        XCTAssertEqual(config["eos_token"] as? String, nil)   // the file declares no EOS
        XCTAssertNil(config["add_eos_token"])                 // so the template alone adds </s>
        XCTAssertEqual(config["unk_token"] as? String, "<unk>")
    }

    /// A second write replaces both files whole.
    func testOverwrite() throws {
        let tok = try TokenizerTests.smolJSON.get()
        let json = dir + "/tokenizer.json", config = dir + "/tokenizer_config.json"
        try Data("stale".utf8).write(to: URL(fileURLWithPath: json))
        try Data("stale".utf8).write(to: URL(fileURLWithPath: config))
        try tok.write(tokenizerJSON: json, tokenizerConfig: config, modelMaxLength: 8192)
        let first = try Data(contentsOf: URL(fileURLWithPath: json))
        try tok.write(tokenizerJSON: json, tokenizerConfig: config, modelMaxLength: 8192)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: json)), first, "deterministic output")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).sorted(), ["tokenizer.json", "tokenizer_config.json"])
        XCTAssertEqual(try jsonObject(config)["model_max_length"] as? Int, 8192)
        XCTAssertEqual(try Tokenizer(tokenizerJSON: json, tokenizerConfig: config).encode("Hello world"), tok.encode("Hello world"))
    }

    func testUnwritableDirectory() throws {
        let tok = try TokenizerTests.smolJSON.get()
        let json = "/nonexistent-coquant-dir/tokenizer.json"
        XCTAssertThrowsError(try tok.write(tokenizerJSON: json, tokenizerConfig: dir + "/tokenizer_config.json")) { error in
            XCTAssertEqual((error as? ModelFileError)?.file, json)
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [])
    }

    func jsonObject(_ path: String) throws -> [String: Any] {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    }
}
