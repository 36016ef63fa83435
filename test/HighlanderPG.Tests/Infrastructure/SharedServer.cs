namespace HighlanderPG.Tests.Infrastructure;

/// <summary>The tests that share the suite's one PostgreSQL (<see cref="PostgresFixture"/>, from the test kit).</summary>
[CollectionDefinition(Name)]
public sealed class SharedServer : ICollectionFixture<PostgresFixture>
{
    public const string Name = "shared PostgreSQL server";
}
