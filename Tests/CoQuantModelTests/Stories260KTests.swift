import Foundation
import XCTest
@testable import CoQuantModel

/// llama2.c's real stories260K model (HF conversion): logits of the first 32 steps and 200 greedy tokens.
final class Stories260KTests: XCTestCase {
    func testLogitsAndGreedyGeneration() throws {
        let dir = fixturesDir + "/stories260K"
        let model = try ModelLoader.load(dir + "/hf").model
        let expected = try SafeTensorsFile(path: dir + "/expected.safetensors")
        assertClose(model.forward(try expected.ints("input_ids")), try expected.floats("logits"), atol: 1e-4, "logits")

        let want = try expected.ints("greedy_new_ids")
        let cache = KVCache(config: model.config, capacity: 256)
        var ids: [Int] = []
        var next = argmax(model.forward([1], cache: cache, logits: .last))
        while ids.count < want.count {
            ids.append(next)
            next = argmax(model.forward([next], cache: cache, logits: .last))
        }
        XCTAssertEqual(ids, want)
    }
}
