using HighlanderPG.Testing.Journal;
using Xunit;

namespace HighlanderPG.TestKit.Journal;

/// <summary>What the tests wait for and assert on a <see cref="LifeJournal"/> (the one child-life journal).</summary>
public static class JournalExtensions
{
    /// <summary>
    /// The detail of a start that an in-process child journaled once it held the journal's kernel lock (as the test node
    /// program's child does): like a script start, it is witnessed by the kernel.
    /// </summary>
    public const string KernelLockWitness = "flock";

    private static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(60);

    /// <summary>Whether the kernel lock witnessed this start: every child before it that took the lock was dead.</summary>
    public static bool IsWitnessed(this LifeEvent e) => e.Kind == LifeKind.Started && (e.FromScript || e.Detail is KernelLockWitness);

    /// <summary>
    /// Reads what other processes appended, then returns the number of events: pass it as <c>after</c> to wait only for
    /// what happens from now on.
    /// </summary>
    public static int Mark(this LifeJournal journal)
    {
        journal.Poll();
        return journal.Count;
    }

    /// <summary>Waits for a start of <paramref name="singleton"/> at or after <paramref name="after"/>, on <paramref name="node"/> if given, not on <paramref name="notNode"/> if given.</summary>
    public static Task<LifeEvent> WaitStartedAsync(this LifeJournal journal, string singleton, int after = 0, string? node = null, string? notNode = null, TimeSpan? timeout = null) =>
        journal.WaitAsync(
            e => e.Kind == LifeKind.Started && e.Singleton == singleton && (node is null || e.Node == node) && (notNode is null || e.Node != notNode),
            after,
            timeout ?? DefaultTimeout);

    /// <summary>Waits for the end (a stop, or a kill) of <paramref name="singleton"/>'s child on <paramref name="node"/> at or after <paramref name="after"/>.</summary>
    public static Task<LifeEvent> WaitStoppedAsync(this LifeJournal journal, string singleton, string node, int after = 0, TimeSpan? timeout = null) =>
        journal.WaitAsync(
            e => e.Kind is LifeKind.Stopped or LifeKind.Killed && e.Singleton == singleton && e.Node == node,
            after,
            timeout ?? DefaultTimeout);

    /// <summary>
    /// Asserts at-most-once over everything appended so far: no <see cref="LifeKind.Overlap"/> line (a script child found
    /// another one alive), and no start of a singleton while a start of it on some node has not ended (no stop, kill or
    /// failure from that node since). Two witnessed starts in a row (<see cref="IsWitnessed"/>: the script's, or the test
    /// node's) are no breach: the second one held the kernel lock, so the first had exited (killed before it could write
    /// its stop, or before the test journaled the kill it saw).
    /// </summary>
    /// <remarks>
    /// Lives are matched by node, not by process id: a process node's child journals its own start and stop, while the
    /// test journals the kill it sends from its own process.
    /// </remarks>
    public static void AssertNoOverlap(this LifeJournal journal)
    {
        journal.Poll();
        var violations = new List<string>();
        var running = new Dictionary<string, LifeEvent>();
        foreach (var e in journal.Events)
        {
            switch (e.Kind)
            {
                case LifeKind.Overlap:
                    violations.Add($"a child of {e.Singleton} started on {e.Node} (line {e.Seq}) while another one was alive");
                    break;
                case LifeKind.Started:
                    if (running.TryGetValue(e.Singleton, out var other) && !(other.IsWitnessed() && e.IsWitnessed()))
                    {
                        violations.Add($"{e.Singleton} started on {e.Node} (line {e.Seq}) while still running on {other.Node} (line {other.Seq})");
                    }

                    running[e.Singleton] = e;
                    break;
                case LifeKind.Stopped or LifeKind.Killed or LifeKind.Failed:
                    if (running.TryGetValue(e.Singleton, out var alive) && alive.Node == e.Node)
                    {
                        running.Remove(e.Singleton);
                    }

                    break;
            }
        }

        Assert.True(violations.Count == 0, "At-most-once violated:\n" + string.Join("\n", violations) + "\n" + journal.Describe());
    }
}
