using HighlanderPG.Cli.Configuration;
using HighlanderPG.Testing.Journal;

namespace HighlanderPG.Cli.Demo;

/// <summary>What happened after one fault.</summary>
internal sealed record FaultResult(
    string Fault,
    string? LeaderBefore,
    string? LeaderAfter,
    string OldChild,
    TimeSpan? NewChildAfter,
    bool OldStoppedFirst,
    string Verdict,
    bool Ok,
    TimeSpan? KnownOverlap = null);

/// <summary>What the demo found: broken promises (violations: it fails) and notes for the reader.</summary>
internal sealed class DemoFindings
{
    private readonly Lock _gate = new();
    private readonly List<string> _violations = [];
    private readonly List<string> _notes = [];

    public IReadOnlyList<string> Violations
    {
        get
        {
            lock (_gate)
            {
                return [.. _violations];
            }
        }
    }

    public IReadOnlyList<string> Notes
    {
        get
        {
            lock (_gate)
            {
                return [.. _notes.Distinct()];
            }
        }
    }

    public void Violation(string text)
    {
        lock (_gate)
        {
            _violations.Add(text);
        }
    }

    public void Note(string text)
    {
        lock (_gate)
        {
            _notes.Add(text);
        }
    }
}

/// <summary>
/// Checks the invariants after a fault and measures the recovery, from the children's journal alone: did a new child
/// start within the bound, did the old one stop before it (the kernel lock's <c>overlap</c> lines say if not), how long
/// each took.
/// </summary>
internal static class FaultJudge
{
    /// <summary>The result of <paramref name="fault"/>, and what it breaks recorded in <paramref name="findings"/>.</summary>
    /// <param name="fault">The fault.</param>
    /// <param name="leader">The node it was injected into.</param>
    /// <param name="child">The child that ran on it.</param>
    /// <param name="mark">The journal's length just before the injection.</param>
    /// <param name="injected">When it was injected.</param>
    /// <param name="next">The first child that started after it, or null if none did within the bound.</param>
    /// <param name="events">The journal.</param>
    /// <param name="oldChildAlive">Whether the old child's process is still alive.</param>
    /// <param name="findings">Where violations and notes go.</param>
    public static FaultResult Judge(
        DemoFault fault,
        DemoNode leader,
        LifeEvent child,
        int mark,
        DateTimeOffset injected,
        LifeEvent? next,
        IReadOnlyList<LifeEvent> events,
        bool oldChildAlive,
        DemoFindings findings) =>
        Judge(fault.Title, fault.OrderGuaranteed, fault.RecoveryBound, leader.Id, child, mark, injected, next, events, oldChildAlive, findings);

    internal static FaultResult Judge(
        string title,
        bool orderGuaranteed,
        TimeSpan bound,
        string leader,
        LifeEvent child,
        int mark,
        DateTimeOffset injected,
        LifeEvent? next,
        IReadOnlyList<LifeEvent> events,
        bool oldChildAlive,
        DemoFindings findings)
    {
        var overlap = events.Any(e => e.Kind == LifeKind.Overlap && e.Seq >= mark && (next is null || e.Seq < next.Seq));
        var stop = events.FirstOrDefault(e => e.Kind == LifeKind.Stopped && e.Pid == child.Pid);
        var oldChild = stop is not null && (next is null || stop.Seq < next.Seq) ? $"stopped after {DemoText.Ms(stop.At - injected)}"
            : overlap ? "STILL RUNNING when the new one started"
            : !oldChildAlive ? "killed with its node"
            : "still running";
        string verdict;
        var ok = true;
        TimeSpan? knownOverlap = null;
        if (next is null)
        {
            verdict = $"NOT RECOVERED within {Durations.Format(bound)}";
            ok = false;
            findings.Violation($"{title}: no child ran again within {Durations.Format(bound)}");
        }
        else if (overlap && orderGuaranteed)
        {
            verdict = "TWO CHILDREN AT ONCE";
            ok = false;
            findings.Violation($"{title}: the new child on {next.Node} started while the old one on {leader} still ran");
        }
        else if (overlap)
        {
            // Not a broken promise: the lease cannot cover this (docs/cli.md, "`highlander demo`"); fencing tokens do.
            var seen = events.First(e => e.Kind == LifeKind.Overlap && e.Seq >= mark);
            knownOverlap = stop is not null ? stop.At - seen.At : null;
            verdict = $"overlap{(knownOverlap is { } length ? " " + DemoText.Ms(length) : "")}: needs fencing";
            findings.Note("pg_terminate_backend frees the lock before its holder can know: the holder stops its child at once, but another node may start first. That is what fencing tokens are for (HIGHLANDER_FENCING_TOKEN): guard writes with them.");
        }
        else
        {
            verdict = "ok";
        }

        return new FaultResult(title, leader, next?.Node, oldChild, next is null ? null : next.At - injected, !overlap, verdict, ok, knownOverlap);
    }
}
