import KeelPubSub
import Testing

func parse(_ line: String) -> Result<PubSubCommand, PubSubProtocolError> {
    Array(line.utf8).withUnsafeBytes { bytes in
        do throws(PubSubProtocolError) { return .success(try PubSubLineProtocol.parse(bytes)) } catch { return .failure(error) }
    }
}

@Suite("keel-pubsub line protocol")
struct PubSubProtocolTests {
    @Test func commandsParse() throws {
        #expect(try parse("SUBSCRIBE prices.eur").get() == .subscribe(TopicFilter(parsing: "prices.eur")))
        #expect(try parse("subscribe prices.*\r").get() == .subscribe(TopicFilter(parsing: "prices.*")), "case and a CR are forgiven")
        #expect(try parse("UNSUBSCRIBE *").get() == .unsubscribe(TopicFilter(parsing: "*")))
        #expect(try parse("PING").get() == .ping)
        let line = "PUBLISH prices.eur 1.0843 bid, 1.0845 ask"
        guard case .publish(let topic, let payload) = try parse(line).get() else {
            Issue.record("not a publish")
            return
        }
        #expect(topic == "prices.eur")
        #expect(String(decoding: Array(line.utf8)[payload], as: UTF8.self) == "1.0843 bid, 1.0845 ask", "the rest of the line, spaces and all")
        guard case .publish(_, let empty) = try parse("PUBLISH t").get() else { return }
        #expect(empty.isEmpty, "an empty payload")
    }

    @Test(arguments: [
        ("", "empty line; commands are SUBSCRIBE, UNSUBSCRIBE, PUBLISH and PING"),
        ("FLY away", "unknown command FLY; commands are SUBSCRIBE, UNSUBSCRIBE, PUBLISH and PING"),
        ("SUBSCRIBE", "SUBSCRIBE needs a topic"),
        ("SUBSCRIBE a b", "SUBSCRIBE takes one topic; topics have no spaces"),
        ("SUBSCRIBE a*b", "'*' may only end a pattern (as in prices.*)"),
        ("SUBSCRIBE **", "'*' may only end a pattern (as in prices.*)"),
        ("PUBLISH", "PUBLISH needs a topic"),
        ("PUBLISH a.* hello", "PUBLISH names one topic, not a pattern"),
        ("PING now", "PING takes no argument"),
        ("SUBSCRIBE " + String(repeating: "t", count: 257), "topic longer than 256 bytes"),
    ])
    func malformedLinesGetAClearReason(line: String, reason: String) {
        guard case .failure(let error) = parse(line) else {
            Issue.record("\(line) parsed")
            return
        }
        #expect(error.reason == reason)
        #expect(error.description == "ERR " + reason)
    }

    @Test func filtersMatchExactTopicsAndPrefixes() {
        #expect(TopicFilter(parsing: "a.b").matches("a.b"))
        #expect(!TopicFilter(parsing: "a.b").matches("a.bc"))
        #expect(TopicFilter(parsing: "a.*").matches("a.b.c"))
        #expect(TopicFilter(parsing: "a.*").matches("a."))
        #expect(!TopicFilter(parsing: "a.*").matches("b.a"))
        #expect(TopicFilter(parsing: "*").matches("anything"))
        #expect(TopicFilter(parsing: "a.*").description == "a.*")
    }
}

@Suite("keel-pubsub topic table")
struct TopicTableTests {
    @Test func eachSubscriberGetsAPublicationOnceWhateverMatches() {
        var table = TopicTable<Int>()
        let added = table.add(TopicFilter(parsing: "a.b"), 1)
        let addedAgain = table.add(TopicFilter(parsing: "a.b"), 1)
        #expect(added)
        #expect(!addedAgain, "already subscribed")
        table.add(TopicFilter(parsing: "a.*"), 1)  // both match a.b: still one delivery
        table.add(TopicFilter(parsing: "a.*"), 2)
        table.add(TopicFilter(parsing: "*"), 3)
        table.add(TopicFilter(parsing: "b"), 4)
        var reached: [Int] = []
        table.forEachSubscriber(of: "a.b") { reached.append($0) }
        #expect(reached.sorted() == [1, 2, 3])
        #expect(table.subscriberCount(of: "a.c") == 3)
        #expect(table.subscriberCount(of: "b") == 2)
        #expect(table.subscriberCount(of: "c") == 1)
        let removed = table.remove(TopicFilter(parsing: "a.*"), 1)
        let removedAgain = table.remove(TopicFilter(parsing: "a.*"), 1)
        #expect(removed)
        #expect(!removedAgain)
        #expect(table.subscriberCount(of: "a.c") == 2, "2 and 3")
        table.remove(TopicFilter(parsing: "a.*"), 2)
        table.remove(TopicFilter(parsing: "*"), 3)
        table.remove(TopicFilter(parsing: "a.b"), 1)
        table.remove(TopicFilter(parsing: "b"), 4)
        #expect(table.isEmpty)
        #expect(table.subscriberCount(of: "a.b") == 0)
    }
}
