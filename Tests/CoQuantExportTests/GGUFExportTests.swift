@testable import CoQuantExport
@testable import CoQuantModel
import XCTest

final class GGUFExportTests: XCTestCase {
    /// The exporter's q/k row order is the inverse of the loader's: a GGUF written by us reads back in HF order.
    func testRowOrderInvertsTheLoadersPermutation() {
        for (rows, hd) in [(16, 8), (64, 16), (128, 32)] {
            let order = ModelLoader.ggufRowOrder(rows: rows, headDim: hd)
            XCTAssertEqual(Set(order), Set(0..<rows), "a permutation")
            let hf = (0..<(rows * 3)).map(Float.init)                                   // [rows, 3]
            let gguf = order.flatMap { r in hf[(r * 3)..<(r * 3 + 3)] }
            XCTAssertEqual(ModelLoader.unpermuteRows(gguf, rows: rows, cols: 3, headDim: hd), hf)
        }
    }

    /// llama.cpp wants a token per embedding row: a short vocabulary is padded with unused entries.
    func testVocabularyPaddedToTheEmbeddingRows() {
        let entries: [(String, GGUFWriter.Value)] = [("tokenizer.ggml.tokens", .strings(["a", "b"])),
                                                     ("tokenizer.ggml.token_type", .i32s([1, 3])),
                                                     ("tokenizer.ggml.model", .string("gpt2"))]
        let padded = GGUFExport.paddedVocabulary(entries, to: 4)
        XCTAssertEqual(padded[0].1, .strings(["a", "b", "[PAD2]", "[PAD3]"]))
        XCTAssertEqual(padded[1].1, .i32s([1, 3, 5, 5]))
        XCTAssertEqual(padded[2].1, .string("gpt2"))
        XCTAssertEqual(GGUFExport.paddedVocabulary(entries, to: 2)[0].1, .strings(["a", "b"]))
    }

    /// general.file_type follows the linears' majority type (llama.cpp's llama_ftype numbers).
    func testFileType() {
        XCTAssertEqual(GGUFExport.fileType(Array(repeating: .q4_0, count: 7) + [.q8_0]), 2)
        XCTAssertEqual(GGUFExport.fileType([.q4_1]), 3)
        XCTAssertEqual(GGUFExport.fileType([.q8_0, .q8_0, .q4_0]), 7)
        XCTAssertEqual(GGUFExport.fileType([.q5_0]), 8)
        XCTAssertEqual(GGUFExport.fileType([.f16]), 1)
        XCTAssertEqual(GGUFExport.fileType([]), 0)
    }
}
