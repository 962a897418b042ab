"""What a GraphQL operation may cost, known before it runs: the sum over every selected
field of its weight, multiplied by how many times it can appear.

A field's weight is 1 unless ``FIELD_WEIGHTS`` says more (explanations decode and send a
contribution per feature; a prediction runs every member of the ensemble). How many times
it appears is the product of the list sizes above it: ``first`` (its value, else the
argument's default, at most the configured page maximum), the length of an ``inputs``
list (at most the configured batch maximum), and ``LIST_SIZE_GUESS`` for any other list of
objects. A connection's ``edges`` repeat nothing more: its ``first`` already counted them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLField,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    SelectionSetNode,
    Undefined,
    get_named_type,
    get_operation_ast,
    is_list_type,
    value_from_ast,
)

FIELD_WEIGHTS = {
    "Prediction.explanation": 20,
    "MemberPrediction.explanation": 20,
    "Prediction.members": 5,
    "Prediction.trainedInto": 10,  # a query per prediction
    "Mutation.predict": 20,  # the ensemble and its explanation
    "Mutation.predictBatch": 2,  # per input row: rows share model calls and commits
    "Query.routingPreview": 2,  # per input row
}
LIST_SIZE_GUESS = 10  # contributions (one per model column), any other list: about this many
LIST_SIZES = {"Prediction.members": 3, "Prediction.probabilities": 3, "Prediction.reasons": 3,
              "MemberPrediction.probabilities": 3}  # ensembles and class counts are small


@dataclass(frozen=True)
class ListMaxima:
    """The configured caps that bound a list's size whatever the document asks."""

    page: int
    batch: int


@dataclass(frozen=True)
class _Walk:
    schema: GraphQLSchema
    fragments: dict[str, FragmentDefinitionNode]
    variables: dict[str, Any]
    maxima: ListMaxima


def operation_cost(schema: GraphQLSchema, document: DocumentNode, operation_name: str | None,
                   variables: dict[str, Any] | None, maxima: ListMaxima) -> int:
    """The operation's cost; 0 when the document names no such operation (validation
    reports that)."""
    operation = get_operation_ast(document, operation_name)
    if operation is None:
        return 0
    root = schema.get_root_type(operation.operation)
    fragments = {d.name.value: d for d in document.definitions
                 if isinstance(d, FragmentDefinitionNode)}
    walk = _Walk(schema, fragments, variables or {}, maxima)
    return _selections_cost(walk, root, operation.selection_set, frozenset(), None)


def _selections_cost(walk: _Walk, parent: Any, selections: SelectionSetNode | None,
                     spread: frozenset[str], page: int | None) -> int:
    """The selections' cost on ``parent``; ``page``: the size of the lists of a connection
    (its ``first``) when ``parent`` is one."""
    if selections is None or not isinstance(parent, GraphQLObjectType):
        return _abstract_cost(walk, parent, selections, spread)
    total = 0
    for node in selections.selections:
        if isinstance(node, FieldNode):
            total += _field_cost(walk, parent, node, spread, page)
        else:
            total += _fragment_cost(walk, parent, node, spread, page)
    return total


def _abstract_cost(walk: _Walk, parent: Any, selections: SelectionSetNode | None,
                   spread: frozenset[str]) -> int:
    """Interfaces and unions: the costliest of their object types."""
    if selections is None or parent is None:
        return 0
    kinds = walk.schema.get_possible_types(parent)
    return max((_selections_cost(walk, kind, selections, spread, None) for kind in kinds),
               default=0)


def _fragment_cost(walk: _Walk, parent: GraphQLObjectType, node: Any,
                   spread: frozenset[str], page: int | None) -> int:
    if isinstance(node, InlineFragmentNode):
        kind = (walk.schema.get_type(node.type_condition.name.value)
                if node.type_condition else parent)
        return _selections_cost(walk, kind, node.selection_set, spread, page)
    assert isinstance(node, FragmentSpreadNode)
    name = node.name.value
    fragment = walk.fragments.get(name)
    if fragment is None or name in spread:  # unknown or cyclic: validation refuses it
        return 0
    kind = walk.schema.get_type(fragment.type_condition.name.value)
    return _selections_cost(walk, kind, fragment.selection_set, spread | {name}, page)


def _field_cost(walk: _Walk, parent: GraphQLObjectType, node: FieldNode,
                spread: frozenset[str], page: int | None) -> int:
    definition = parent.fields.get(node.name.value)
    if definition is None:  # __typename, or unknown (validation refuses it)
        return 0
    weight = FIELD_WEIGHTS.get(f"{parent.name}.{node.name.value}", 1)
    arguments = _arguments(walk, node, definition)
    inner_page = (_bounded(arguments.get("first"), walk.maxima.page)
                  if "first" in definition.args else None)
    inner = _selections_cost(walk, get_named_type(definition.type), node.selection_set,
                             spread, inner_page)
    guess = LIST_SIZES.get(f"{parent.name}.{node.name.value}", LIST_SIZE_GUESS)
    return _repeat(walk, definition, arguments, page, guess) * (weight + inner)


def _repeat(walk: _Walk, definition: GraphQLField, arguments: dict[str, Any],
            page: int | None, guess: int) -> int:
    """How many times the field is resolved: a connection's lists repeat its page size,
    a batch's answers the rows of its ``inputs``, any other list of objects a guess."""
    if isinstance(arguments.get("inputs"), list):
        return min(len(arguments["inputs"]), walk.maxima.batch)
    if not _object_list(definition):
        return 1
    return page if page is not None else guess


def _object_list(definition: GraphQLField) -> bool:
    kind = definition.type
    if isinstance(kind, GraphQLNonNull):
        kind = kind.of_type
    return is_list_type(kind) and isinstance(
        get_named_type(kind), GraphQLObjectType) and isinstance(kind, GraphQLList)


def _arguments(walk: _Walk, node: FieldNode, definition: GraphQLField) -> dict[str, Any]:
    """The field's argument values (variables substituted, defaults filled in)."""
    given = {a.name.value: a.value for a in node.arguments or ()}
    values: dict[str, Any] = {}
    for name, argument in definition.args.items():
        if name in given:
            values[name] = value_from_ast(given[name], argument.type, walk.variables)
        elif argument.default_value is not Undefined:
            values[name] = argument.default_value
    return values


def _bounded(value: Any, maximum: int) -> int:
    """A list size from a ``first``: at most the maximum, the maximum when unreadable."""
    if isinstance(value, int) and not isinstance(value, bool):
        return max(0, min(value, maximum))
    return maximum
