"""The drug knowledge layer: ingredients, classes, interaction rules, as cited data."""
