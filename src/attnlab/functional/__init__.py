"""Pure tensor math for attention: scores, masks, masked softmax, score mods, positions."""
