using System.Globalization;
using HighlanderPG.Cli.Processes;
using HighlanderPG.Testing;
using HighlanderPG.Testing.Journal;
using Npgsql;

namespace HighlanderPG.Cli.Demo;

/// <summary>One fault the demo injects into the leader, and what it does once the cluster recovered.</summary>
/// <param name="Title">What it is, as the summary shows it.</param>
/// <param name="Needs">How much of the demo's time it needs; it is skipped if less is left.</param>
/// <param name="OrderGuaranteed">Whether the lease promises that the old child stops before the new one starts.</param>
/// <param name="RecoveryBound">How long a new child may take to start before the fault counts as not recovered from.</param>
/// <param name="Inject">Injects it into the leader (whose child is given).</param>
/// <param name="Afterward">Undoes it (restart, heal) once the new child ran, if needed.</param>
internal sealed record DemoFault(
    string Title,
    TimeSpan Needs,
    bool OrderGuaranteed,
    TimeSpan RecoveryBound,
    Func<DemoNode, LifeEvent, CancellationToken, Task> Inject,
    Func<DemoNode, LifeEvent, Task>? Afterward);

/// <summary>The faults the demo injects, in order: graceful stop, kill -9, cut-off, killed backend, server restart.</summary>
internal sealed class DemoFaults(DemoCluster cluster, DemoView view, DemoFindings findings)
{
    private static readonly TimeSpan Recovery = DemoCluster.Lease + TimeSpan.FromSeconds(7);

    /// <summary>Every fault this cluster can take (a server restart only if the demo started the server).</summary>
    public IReadOnlyList<DemoFault> All()
    {
        var faults = new List<DemoFault> { GracefulStop(), Kill(), CutOff(), TerminateBackend() };
        if (cluster.Server is not null)
        {
            faults.Add(RestartServer());
        }
        else
        {
            findings.Note("server restart skipped: the demo restarts only a server it started itself");
        }

        return faults;
    }

    private DemoFault GracefulStop() => new(
        "graceful stop (SIGTERM) of the leader", TimeSpan.FromSeconds(12), OrderGuaranteed: true, Recovery,
        Inject: (leader, _, _) =>
        {
            leader.Fate = "stopped (SIGTERM)";
            leader.Signal(Native.SigTerm);
            return Task.CompletedTask;
        },
        Afterward: async (leader, _) =>
        {
            var code = await leader.WaitForExitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(false);
            if (code != ExitCodes.Ok)
            {
                findings.Violation($"{leader.Id} exited with {(code is null ? "no exit within 10 s" : "code " + code)} after SIGTERM (expected 0)");
            }

            view.Event($"{leader.Id} exited with code {code?.ToString(CultureInfo.InvariantCulture) ?? "?"}; restarting it");
            await leader.StartAsync().ConfigureAwait(false);
        });

    private DemoFault Kill() => new(
        "kill -9 of the leader", TimeSpan.FromSeconds(12), OrderGuaranteed: true, Recovery,
        Inject: (leader, _, _) =>
        {
            leader.Fate = "killed (SIGKILL)";
            leader.Signal(Native.SigKill);
            return Task.CompletedTask;
        },
        Afterward: async (leader, child) =>
        {
            await leader.WaitForExitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(false);
            if (Native.ProcessAlive(child.Pid))
            {
                findings.Violation($"the child (pid {child.Pid}) survived its node's SIGKILL");
            }

            view.Event($"{leader.Id} is gone and its child pid {child.Pid} with it; restarting {leader.Id}");
            await leader.StartAsync().ConfigureAwait(false);
        });

    private DemoFault CutOff() => new(
        "leader cut off (proxy blackhole)", TimeSpan.FromSeconds(18), OrderGuaranteed: true, Recovery,
        Inject: (leader, _, _) =>
        {
            leader.CutOff = true;
            leader.Proxy.SetMode(ProxyMode.Blackhole);
            return Task.CompletedTask;
        },
        Afterward: (leader, _) =>
        {
            leader.Proxy.SetMode(ProxyMode.Pass);
            leader.CutOff = false;
            view.Event($"{leader.Id}'s network healed: it reconnects and follows");
            return Task.CompletedTask;
        });

    private DemoFault TerminateBackend() => new(
        "leader's backend killed (pg_terminate_backend)", TimeSpan.FromSeconds(12), OrderGuaranteed: false, Recovery,
        Inject: async (leader, _, cancellationToken) =>
        {
            await using var connection = new NpgsqlConnection(new NpgsqlConnectionStringBuilder(cluster.Connection) { Pooling = false, ApplicationName = "highlander-demo" }.ConnectionString);
            await connection.OpenAsync(cancellationToken).ConfigureAwait(false);
            await using var command = new NpgsqlCommand(
                """
                SELECT pid, pg_terminate_backend(pid) FROM pg_locks
                WHERE locktype = 'advisory' AND granted AND mode = 'ExclusiveLock' AND objsubid = 1
                  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                  AND ((classid::bigint << 32) | objid::bigint) = $1
                """,
                connection);
            command.Parameters.Add(new NpgsqlParameter<long> { TypedValue = cluster.Key });
            var pid = await command.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false);
            view.Event($"pg_terminate_backend({pid}) — {leader.Id}'s lock session");
        },
        Afterward: null);

    private DemoFault RestartServer() => new(
        "server restart", TimeSpan.FromSeconds(20), OrderGuaranteed: true, TimeSpan.FromSeconds(15),
        Inject: async (_, _, cancellationToken) =>
        {
            await cluster.Server!.RestartAsync(ShutdownMode.Fast, cancellationToken).ConfigureAwait(false);
            view.Event("server back up; nodes wait out the lock-delay (= lease) before taking the lock");
        },
        Afterward: null);
}
