using HighlanderPG;
using HighlanderPG.Hosting;
using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace HighlanderPG.Hosting
{
    /// <summary>
    /// Healthy while the node's lock session works (leading or following); degraded while it has no working session
    /// (nothing runs here, and it keeps reconnecting) or a singleton gave up after a crash loop.
    /// </summary>
    internal sealed class HighlanderHealthCheck(HighlanderNode node) : IHealthCheck
    {
        public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
        {
            var singletons = node.GetAll();
            var data = singletons.ToDictionary(s => s.Name, s => (object)$"{s.State}{(s.Leader?.NodeId is { } leader ? " (leader " + leader + ")" : "")}");
            foreach (var group in node.GetGroups())
            {
                // One entry per member, "group/member", beside the group's own entry (its singleton's state).
                foreach (var member in group.Members)
                {
                    data[$"{group.Name}/{member.Name}"] = $"{member.State}, restarts {member.Restarts}{(member.LastError is null ? "" : ", last error: " + member.LastError)}";
                }
            }

            var connected = node.Session?.IsConnected == true;
            var faulted = singletons.Where(s => s.State == SingletonState.Faulted).Select(s => s.Name).ToList();
            var result = !connected
                ? new HealthCheckResult(context.Registration.FailureStatus, $"No working lock session: {node.Session?.LastError ?? "not started"}", data: data)
                : faulted.Count > 0
                    ? new HealthCheckResult(context.Registration.FailureStatus, $"Gave up after crash loops: {string.Join(", ", faulted)}", data: data)
                    : HealthCheckResult.Healthy($"{singletons.Count(s => s.State is SingletonState.Leading or SingletonState.Completed)} of {singletons.Count} singleton(s) led here", data);
            return Task.FromResult(result);
        }
    }
}

namespace Microsoft.Extensions.DependencyInjection
{
    /// <summary>Registers HighlanderPG's health check.</summary>
    public static class HighlanderHealthChecksBuilderExtensions
    {
        /// <summary>
        /// Adds a health check that is healthy while this node's lock session works, and reports
        /// <paramref name="failureStatus"/> while it has none or a singleton gave up.
        /// </summary>
        /// <param name="builder">The health checks builder.</param>
        /// <param name="name">The check's name.</param>
        /// <param name="failureStatus">What to report when unhealthy; the default is <see cref="HealthStatus.Degraded"/>
        /// (the app itself works; only its singletons don't run here).</param>
        /// <param name="tags">A list of tags that can be used to filter health checks (e.g. by a health endpoint's
        /// <c>Predicate</c>); the default (<see langword="null"/>) is the single tag <c>highlander</c>.</param>
        public static IHealthChecksBuilder AddHighlander(this IHealthChecksBuilder builder, string name = "highlander", HealthStatus failureStatus = HealthStatus.Degraded, IEnumerable<string>? tags = null)
        {
            ArgumentNullException.ThrowIfNull(builder);
            return builder.Add(new HealthCheckRegistration(name, sp => new HighlanderHealthCheck(sp.GetRequiredService<HighlanderNode>()), failureStatus, tags ?? ["highlander"]));
        }
    }
}
