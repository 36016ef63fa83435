using System.Diagnostics;
using HighlanderPG.Benchmarks.Infrastructure;
using HighlanderPG.Benchmarks.Measurement;
using HighlanderPG.Benchmarks.Reporting;
using HighlanderPG.Testing;
using Npgsql;

namespace HighlanderPG.Benchmarks.Cases;

/// <summary>
/// HighlanderPG: a follower node (in this process, default options unless noted) waits for a singleton led by another
/// node; timed from just before the fault to the entry of the follower's child (the work running again). Each
/// iteration uses fresh nodes and a fresh singleton name, and injects the fault only once the follower's wait session
/// is seen blocked in <c>pg_advisory_lock_shared</c>, after a random dwell.
/// </summary>
internal static class HighlanderCases
{
    /// <summary>Lease settings of the cut-off case: valid (2 × heartbeat + stop timeout + margin = 2.5 s ≤ lease, heartbeat ≤ lease / 3).</summary>
    public static readonly TimeSpan CutOffLease = TimeSpan.FromSeconds(3);
    public static readonly TimeSpan CutOffHeartbeat = TimeSpan.FromMilliseconds(500);
    public static readonly TimeSpan CutOffStopTimeout = TimeSpan.FromSeconds(1);
    public static readonly TimeSpan CutOffMargin = TimeSpan.FromMilliseconds(500);

    /// <summary>A follower's wait slice must be shorter than the lease (it bounds every statement of the node's sessions).</summary>
    public static readonly TimeSpan CutOffWaitSlice = TimeSpan.FromSeconds(2);

    public const string System = "HighlanderPG";

    private static readonly HighlanderOptions Defaults = new();

    public static BenchCase Graceful(BenchContext context)
    {
        var result = new CaseResult("hl-graceful", System, "graceful",
            "Leader node (same process, own host) is told `IClusterSingletons.StepDownAsync(name)`: it stops its child, then unlocks and NOTIFYs in one statement; " +
            "timed from just before that call to the follower's child starting.");
        var ns = $"bench-{context.RunId}";
        var violations = 0;
        var escalations = 0;
        var unheard = 0;
        var tries = new SortedDictionary<int, int>();
        NotifyObserver? observer = null;
        return new BenchCase(result, context.Settings.Iterations, IterationAsync)
        {
            SetUp = async ct => observer = await NotifyObserver.StartAsync(context, ct),
            TearDown = async () =>
            {
                if (observer is not null)
                {
                    await observer.DisposeAsync();
                }
            },
            Conclude = () =>
            {
                Conclude(result, violations, escalations);
                if (unheard > 0)
                {
                    result.Note($"A bystander LISTENing on `{NotifyObserver.Channel}` did not hear the release (within 200 ms of the follower's child starting) in {unheard} iteration(s).");
                }

                NoteTries(result, tries);
            },
        };

        async Task<Measured> IterationAsync(int i, CancellationToken ct)
        {
            var name = $"graceful-{i}";
            var key = SingletonKey.Derive(ns, name);
            await using var leader = await InProcessNode.StartAsync(context.ConnectionString, ns, $"bench-lead-{i}", name, null, context.Settings.Verbose, ct);
            await leader.ChildStarted.WaitAsync(BenchContext.SetupTimeout, ct);
            await using var follower = await InProcessNode.StartAsync(context.ConnectionString, ns, $"bench-follow-{i}", name, null, context.Settings.Verbose, ct);
            await context.Probe.WaitForWaiterAsync(key, LockProbe.Shared, BenchContext.SetupTimeout, ct);
            await Task.WhenAll(leader.Rehearsed, follower.Rehearsed).WaitAsync(BenchContext.SetupTimeout, ct);
            await Task.Delay(context.Dwell(Defaults.HeartbeatInterval), ct);

            var start = Stopwatch.GetTimestamp();
            await leader.Singletons.StepDownAsync(name, ct);
            var released = Stopwatch.GetTimestamp();
            var measured = await AwaitTakeOverAsync(context, follower, start, ct);
            var components = new List<(string, double)>(measured.Components) { ("`StepDownAsync` returned (lock released)", Sample.ToMilliseconds(released - start)) };
            AddTrips(context, leader, follower, start, released, components, tries);
            var heard = observer!.FirstSeen(key);
            for (var wait = 0; heard is null && wait < 20; wait++)
            {
                // The follower may start before the bystander hears the release (its wait session woke first).
                await Task.Delay(10, ct);
                heard = observer.FirstSeen(key);
            }

            if (heard is { } heardAt)
            {
                components.Add(("release NOTIFY heard by a bystander session", Sample.ToMilliseconds(heardAt - start)));
                if (follower.ChildStarted.IsCompletedSuccessfully)
                {
                    components.Add((MarkdownReport.IntervalPrefix + "from the release NOTIFY heard by the bystander to the follower's child starting (negative when the follower started first)", Sample.ToMilliseconds(follower.ChildStarted.Result - heardAt)));
                }
            }
            else
            {
                unheard++;
            }

            violations += CheckOrder(leader, follower, start, components);
            escalations += leader.Escalations + follower.Escalations;

            await follower.StopAsync();
            await leader.StopAsync();
            return measured with { Components = components };
        }
    }

    public static BenchCase Crash(BenchContext context)
    {
        var result = new CaseResult("hl-crash", System, "crash",
            "Leader node is a separate process (this executable, `node --kind highlander`, default options) and is SIGKILLed while its child runs; " +
            "timed from just before `Process.Kill()` to the follower's child starting.");
        var ns = $"bench-{context.RunId}";
        var escalations = 0;
        var tries = new SortedDictionary<int, int>();
        return new BenchCase(result, context.Settings.Iterations, IterationAsync)
        {
            Conclude = () =>
            {
                Conclude(result, violations: 0, escalations);
                NoteTries(result, tries);
            },
        };

        async Task<Measured> IterationAsync(int i, CancellationToken ct)
        {
            var name = $"crash-{i}";
            var key = SingletonKey.Derive(ns, name);
            List<string> arguments = ["--kind", "highlander", "--namespace", ns, "--name", name];
            if (context.Settings.Verbose)
            {
                arguments.Add("--verbose");
            }

            await using var node = NodeProcess.Start(context.ConnectionString, arguments);
            await node.WaitReadyAsync(BenchContext.SetupTimeout, ct);
            await using var follower = await InProcessNode.StartAsync(context.ConnectionString, ns, $"bench-follow-{i}", name, null, context.Settings.Verbose, ct);
            await context.Probe.WaitForWaiterAsync(key, LockProbe.Shared, BenchContext.SetupTimeout, ct);
            await follower.Rehearsed.WaitAsync(BenchContext.SetupTimeout, ct);
            await Task.Delay(context.Dwell(Defaults.HeartbeatInterval), ct);

            var start = Stopwatch.GetTimestamp();
            node.Kill();
            var measured = await AwaitTakeOverAsync(context, follower, start, ct);
            var components = new List<(string, double)>(measured.Components);
            AddTrips(context, null, follower, start, null, components, tries);
            escalations += follower.Escalations;
            await follower.StopAsync();
            return measured with { Components = components };
        }
    }

    public static BenchCase CutOff(BenchContext context)
    {
        var result = new CaseResult("hl-cutoff", System, "cut-off",
            "Leader node (same process, connected through a `FaultProxy`) is cut off by switching the proxy to blackhole (nothing forwarded, no close, both sockets open); " +
            "the server ends its silent session after the lease (`idle_session_timeout`); timed from just before `SetMode(Blackhole)` to the follower's child starting.")
        {
            Settings = $"Both nodes: LeaseDuration {CutOffLease.TotalSeconds:0} s, HeartbeatInterval {CutOffHeartbeat.TotalMilliseconds:0} ms, " +
                $"StopTimeout {CutOffStopTimeout.TotalSeconds:0} s, SafetyMargin {CutOffMargin.TotalMilliseconds:0} ms, " +
                $"WaitSlice {CutOffWaitSlice.TotalSeconds:0} s (2 × heartbeat + stop timeout + margin = 2.5 s ≤ lease; heartbeat ≤ lease / 3; wait slice < lease); other options default.",
        };
        var ns = $"bench-{context.RunId}";
        var violations = 0;
        var escalations = 0;
        var builder = new NpgsqlConnectionStringBuilder(context.ConnectionString);
        var tries = new SortedDictionary<int, int>();
        return new BenchCase(result, context.Settings.Iterations, IterationAsync)
        {
            Conclude = () =>
            {
                Conclude(result, violations, escalations);
                NoteTries(result, tries);
            },
        };

        static void Tune(HighlanderOptions o)
        {
            o.LeaseDuration = CutOffLease;
            o.HeartbeatInterval = CutOffHeartbeat;
            o.StopTimeout = CutOffStopTimeout;
            o.SafetyMargin = CutOffMargin;
            o.WaitSlice = CutOffWaitSlice;
        }

        async Task<Measured> IterationAsync(int i, CancellationToken ct)
        {
            var name = $"cutoff-{i}";
            var key = SingletonKey.Derive(ns, name);
            var proxy = FaultProxy.Start(builder.Host!, builder.Port);
            try
            {
                await using var leader = await InProcessNode.StartAsync(proxy.ConnectionString(context.ConnectionString), ns, $"bench-lead-{i}", name, Tune, context.Settings.Verbose, ct);
                await leader.ChildStarted.WaitAsync(BenchContext.SetupTimeout, ct);
                await using var follower = await InProcessNode.StartAsync(context.ConnectionString, ns, $"bench-follow-{i}", name, Tune, context.Settings.Verbose, ct);
                await context.Probe.WaitForWaiterAsync(key, LockProbe.Shared, BenchContext.SetupTimeout, ct);
                await Task.WhenAll(leader.Rehearsed, follower.Rehearsed).WaitAsync(BenchContext.SetupTimeout, ct);
                await Task.Delay(context.Dwell(CutOffHeartbeat), ct);

                var start = Stopwatch.GetTimestamp();
                proxy.SetMode(ProxyMode.Blackhole);
                var measured = await AwaitTakeOverAsync(context, follower, start, ct);
                var components = new List<(string, double)>(measured.Components);
                violations += CheckOrder(leader, follower, start, components);
                AddTrips(context, null, follower, start, null, components, tries);
                escalations += leader.Escalations + follower.Escalations;

                await follower.StopAsync();
                await proxy.DisposeAsync(); // resets the blackholed connections, so the cut-off leader stops at once
                await leader.StopAsync();
                return measured with { Components = components };
            }
            finally
            {
                await proxy.DisposeAsync();
            }
        }
    }

    /// <summary>
    /// From the nodes' round trips (their meter): when the leader's release statement was sent and answered (if
    /// <paramref name="released"/> is given), and the follower's last round trip before its child started (the try that
    /// got the lock); counts the follower's round trips in the hand-over into <paramref name="tries"/>.
    /// </summary>
    private static void AddTrips(BenchContext context, InProcessNode? leader, InProcessNode follower, long start, long? released, List<(string, double)> components, SortedDictionary<int, int> tries)
    {
        if (leader is not null && released is { } until && context.RoundTrips.Between(leader.NodeId, start, until) is { Count: > 0 } leaderTrips)
        {
            var (sent, answered) = leaderTrips[^1];
            components.Add(("leader sent its unlock + NOTIFY", Sample.ToMilliseconds(sent - start)));
            components.Add(("leader's unlock + NOTIFY answered", Sample.ToMilliseconds(answered - start)));
            components.Add((MarkdownReport.IntervalPrefix + "leader's unlock + NOTIFY round trip", Sample.ToMilliseconds(answered - sent)));
        }

        if (follower.ChildStarted.IsCompletedSuccessfully)
        {
            var followerTrips = context.RoundTrips.Between(follower.NodeId, start, follower.ChildStarted.Result);
            tries[followerTrips.Count] = tries.GetValueOrDefault(followerTrips.Count) + 1;
            if (followerTrips.Count > 0)
            {
                var (sent, answered) = followerTrips[^1];
                components.Add(("follower sent the try that got the lock", Sample.ToMilliseconds(sent - start)));
                components.Add(("follower's try answered (lock taken)", Sample.ToMilliseconds(answered - start)));
                components.Add((MarkdownReport.IntervalPrefix + "follower's winning try round trip (try + holder query)", Sample.ToMilliseconds(answered - sent)));
            }
        }

        context.RoundTrips.Forget(start);
    }

    private static void NoteTries(CaseResult result, SortedDictionary<int, int> tries)
    {
        if (tries.Count > 0)
        {
            result.Note("Follower lock-session round trips between the fault and its child starting (from HighlanderPG's `highlander.session.round_trip.duration` meter; heartbeats count too, so in a hand-over of milliseconds more than one means a try failed and was repeated): " +
                string.Join(", ", tries.Select(t => $"{t.Key} in {t.Value} iteration(s)")) + " (warm-up included).");
        }
    }

    /// <summary>Waits (up to the cap) for the follower's child.</summary>
    private static async Task<Measured> AwaitTakeOverAsync(BenchContext context, InProcessNode follower, long start, CancellationToken cancellationToken)
    {
        try
        {
            return new Measured(Sample.Between(start, await follower.ChildStarted.WaitAsync(context.Settings.Cap, cancellationToken)));
        }
        catch (TimeoutException)
        {
            return new Measured(Sample.Beyond(context.Settings.Cap));
        }
    }

    /// <summary>Records when the old child stopped; returns 1 if it had not stopped before the new one started.</summary>
    private static int CheckOrder(InProcessNode leader, InProcessNode follower, long start, List<(string, double)> components)
    {
        if (!follower.ChildStarted.IsCompletedSuccessfully)
        {
            return 0;
        }

        if (leader.FirstChildStop is not { } stopped)
        {
            return 1;
        }

        components.Add(("old child stopped", Sample.ToMilliseconds(stopped - start)));
        components.Add((MarkdownReport.IntervalPrefix + "old child stopped before the new child started, by", Sample.ToMilliseconds(follower.ChildStarted.Result - stopped)));
        return stopped < follower.ChildStarted.Result ? 0 : 1;
    }

    private static void Conclude(CaseResult result, int violations, int escalations)
    {
        if (result.Id != "hl-crash")
        {
            result.OrderViolations = violations;
            result.Note(violations == 0
                ? $"Order: in every measured and warm-up iteration the old child had stopped before the new one started."
                : $"ORDER VIOLATED: in {violations} iteration(s) the new child started before the old one had stopped.");
        }

        if (escalations > 0)
        {
            result.Note($"{escalations} escalation(s): a child was not stopped in time (the benchmark's nodes count escalations instead of ending the process).");
        }
    }
}
