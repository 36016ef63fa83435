namespace HighlanderPG.Placement;

/// <summary>
/// One node's view of the spread placement at one moment: the live members (this node among them), its share, and the
/// rendezvous ranking of a key among them. Immutable; a fresh one is made at each membership read.
/// </summary>
internal sealed class SpreadView
{
    private readonly (Member Member, ulong Hash)[] _members;
    private readonly ulong _selfHash;

    public SpreadView(string self, int selfPid, IReadOnlyList<Member> members, TimeSpan settle)
    {
        Self = self;
        SelfPid = selfPid;
        Settle = settle;
        var all = members.Where(m => m.Pid != selfPid).ToList();
        all.Add(new Member(self, selfPid, null, 0));
        _members = [.. all.Select(m => (m, Rendezvous.NodeHash(m.NodeId ?? "pid:" + m.Pid)))];
        _selfHash = Rendezvous.NodeHash(self);
        Others = [.. all.Where(m => m.Pid != selfPid)];
    }

    /// <summary>This node's id.</summary>
    public string Self { get; }

    public int SelfPid { get; }

    /// <summary>How long a member must have been live before others hand singletons over to it.</summary>
    public TimeSpan Settle { get; }

    /// <summary>The other live members.</summary>
    public IReadOnlyList<Member> Others { get; }

    /// <summary>How many members are live, this node included.</summary>
    public int Live => _members.Length;

    /// <summary>The most singletons a member should lead: <c>ceil(registered / live)</c>.</summary>
    public int Share(int registered) => Math.Max(1, (registered + Live - 1) / Live);

    /// <summary>Whether <paramref name="member"/> has been live for the settle time (a hidden session start counts as settled).</summary>
    public bool IsSettled(Member member) => member.Age is not { } age || age >= Settle;

    /// <summary>This node's rendezvous weight for <paramref name="key"/>.</summary>
    public ulong SelfScore(long key) => Rendezvous.Score(_selfHash, key);

    /// <summary>Whether this node ranks first for <paramref name="key"/> among the live members.</summary>
    public bool IsFavourite(long key)
    {
        var mine = SelfScore(key);
        foreach (var (member, hash) in _members)
        {
            if (member.Pid != SelfPid && Rendezvous.Score(hash, key) > mine)
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>The highest rendezvous weight for <paramref name="key"/> among <paramref name="candidates"/> (0 when none).</summary>
    public static ulong BestScore(IEnumerable<Member> candidates, long key) =>
        candidates.Select(m => Rendezvous.Score(m.NodeId ?? "pid:" + m.Pid, key)).DefaultIfEmpty(0UL).Max();

    /// <summary>Whether a live member other than this node matches <paramref name="patterns"/> (and has settled, if asked).</summary>
    public bool OtherMatches(IReadOnlyList<string> patterns, bool settledOnly) =>
        Others.Any(m => NodePattern.MatchesAny(patterns, m.NodeId) && (!settledOnly || IsSettled(m)));

    /// <summary>Whether the set of live members (by pid and node id) differs from <paramref name="other"/>'s.</summary>
    public bool SameMembers(SpreadView? other) =>
        other is not null && other._members.Select(m => (m.Member.Pid, m.Member.NodeId)).ToHashSet().SetEquals(_members.Select(m => (m.Member.Pid, m.Member.NodeId)));

    /// <summary>For logs: the live members' node ids.</summary>
    public string Describe() => string.Join(", ", _members.Select(m => m.Member.NodeId ?? "pid " + m.Member.Pid).Order(StringComparer.Ordinal));
}

/// <summary>
/// What one try statement is to do: <see cref="All"/> every key (preferred here, or whose grace ran out), then at most
/// <see cref="Limit"/> of <see cref="Limited"/>, in order (the node's room below its share, its favourites first).
/// </summary>
internal sealed record TryPlan(long[] All, long[] Limited, int Limit)
{
    public int Count => All.Length + Limited.Length;

    public static TryPlan Every(long[] keys) => new(keys, [], 0);
}

/// <summary>Why a leader hands a singleton over under the spread placement.</summary>
internal enum HandOverReason
{
    /// <summary>It leads more than its share, and a settled member leads less than its share.</summary>
    Surplus,

    /// <summary>The singleton prefers another node, which is live and settled; this one is not preferred.</summary>
    Preference,
}

/// <summary>The spread placement's decisions, with no I/O and no state (see docs/lease-protocol.md, "Placement").</summary>
internal static class SpreadPlanner
{
    /// <summary>
    /// The order in which a node below its share tries free singletons: those it ranks first for among the live members
    /// (rendezvous), then the rest by its weight. Members pick different singletons first, so they seldom collide.
    /// </summary>
    public static long[] FavouritesFirst(IEnumerable<long> keys, SpreadView view) =>
        [.. keys.Select(k => (Key: k, Favourite: view.IsFavourite(k), Score: view.SelfScore(k)))
            .OrderByDescending(k => k.Favourite).ThenByDescending(k => k.Score).Select(k => k.Key)];

    /// <summary>
    /// Which of the singletons this node leads it should hand over now. Preference: a singleton whose preferred nodes do
    /// not include this one while a preferred member is live and settled. Surplus: when this node leads more than its share
    /// and settled members lead less than theirs, its part of their deficit (in proportion to its surplus among all
    /// members' surpluses, so that several leaders above their share do not free more than the deficit together), the
    /// singletons that a member below its share ranks highest relative to this node first. Never a singleton that prefers
    /// this node. <paramref name="held"/>: the singletons led here and not already being handed over, with their preferences.
    /// </summary>
    public static List<(long Key, HandOverReason Reason)> HandOvers(IReadOnlyList<(long Key, IReadOnlyList<string> Preferred)> held, int registered, SpreadView view)
    {
        var result = new List<(long Key, HandOverReason Reason)>();
        var chosen = new HashSet<long>();
        foreach (var (key, preferred) in held)
        {
            if (preferred.Count > 0 && !NodePattern.MatchesAny(preferred, view.Self) && view.OtherMatches(preferred, settledOnly: true))
            {
                result.Add((key, HandOverReason.Preference));
                chosen.Add(key);
            }
        }

        var share = view.Share(registered);
        var leading = held.Count - chosen.Count;
        var surplus = leading - share;
        var below = view.Others.Where(m => view.IsSettled(m) && m.Leading < share).ToList();
        if (surplus <= 0 || below.Count == 0)
        {
            return result;
        }

        var deficit = below.Sum(m => share - m.Leading);
        var totalSurplus = surplus + view.Others.Sum(m => Math.Max(0, m.Leading - share));
        var count = (int)Math.Min(surplus, ((long)deficit * surplus + totalSurplus - 1) / totalSurplus);
        var candidates = held
            .Where(h => !chosen.Contains(h.Key) && !(h.Preferred.Count > 0 && NodePattern.MatchesAny(h.Preferred, view.Self)))
            .Select(h => (h.Key, Best: SpreadView.BestScore(below, h.Key), Mine: view.SelfScore(h.Key)))
            .OrderByDescending(h => h.Best > h.Mine).ThenByDescending(h => h.Best)
            .Take(count);
        result.AddRange(candidates.Select(c => (c.Key, HandOverReason.Surplus)));
        return result;
    }

    /// <summary>How many singletons the settled members below their share lack, in all.</summary>
    public static int Deficit(SpreadView view, int registered)
    {
        var share = view.Share(registered);
        return view.Others.Where(m => view.IsSettled(m) && m.Leading < share).Sum(m => share - m.Leading);
    }
}
